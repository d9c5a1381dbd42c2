"""search_ablation's summary: paired differences over searches, the best peer, the sampled
share at or above the best start point, and its resumable units."""

from __future__ import annotations

import gzip
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
from quality import PEER_ARMS, Units, _ablation_summary, paired_ci  # noqa: E402


def _row(i: int, accs: dict[str, float], share: float | None) -> dict:
    arms = {a: {"test_acc": [v - 0.001, v + 0.001]} for a, v in accs.items()}
    arms["default"]["sampled_at_or_above_best_start"] = share
    return {"search": i, "arms": arms}


def test_the_summary_pairs_by_search_and_picks_the_best_peer():
    base = {"uniform": 0.60, "start_points": 0.66, "random": 0.67, "per_group": 0.65,
            "sensitivity": 0.66, "netadapt": 0.68, "tp_global": 0.30, "tp_isomorphic": 0.28}
    rows = [_row(0, {**base, "default": 0.69}, 0.5), _row(1, {**base, "default": 0.70}, 0.25),
            _row(2, {**base, "default": 0.71, "netadapt": 0.70}, None)]
    s = _ablation_summary(rows)
    assert s["n_searches"] == 3
    assert s["vs_uniform"]["per_search_pp"] == pytest.approx([9.0, 10.0, 11.0])
    assert s["vs_uniform"]["gain_pp"] == pytest.approx(10.0)
    lo, hi = s["vs_uniform"]["ci95_pp"]
    assert lo < 10.0 < hi and hi - lo == pytest.approx(2 * 4.302653 * 1 / 3 ** 0.5, rel=1e-4)
    # NetAdapt has the best mean over the searches (0.6867 vs sensitivity's 0.66).
    assert s["vs_best_peer"]["peer"] == "netadapt"
    assert s["vs_best_peer"]["per_search_pp"] == pytest.approx([1.0, 2.0, 1.0])
    assert set(s["peers"]) == set(PEER_ARMS)
    assert s["peers"]["tp_global"]["gain_pp"] == pytest.approx(-30.0)
    assert s["sampled_at_or_above_best_start"] == pytest.approx(0.375)  # median of 0.5, 0.25
    assert s["mean_test_acc"]["default"] == pytest.approx(0.70)


def test_one_search_has_no_interval():
    gain, (lo, hi) = paired_ci([1.5])
    assert gain == 1.5 and lo != lo and hi != hi  # NaN: one search says nothing of spread


def test_units_are_kept_and_a_new_run_resumes_from_them(tmp_path):
    path = str(tmp_path / "units.json.gz")
    made = []
    units = Units(path)
    assert units.get("a", lambda: made.append("a") or 1) == 1
    assert units.get("a", lambda: made.append("again") or 2) == 1 and made == ["a"]
    again = Units(path)  # a later process
    assert again.get("a", lambda: made.append("third") or 3) == 1 and made == ["a"]
    with gzip.open(path, "rt") as f:
        assert json.load(f) == {"a": 1}
