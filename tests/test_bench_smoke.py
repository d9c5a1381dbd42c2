"""Each benchmark runs end to end in its --quick mode and reports numbers of the right kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, needs_shared

pytestmark = [pytest.mark.slow, needs_shared]


def run_bench(name: str) -> dict:
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), name, "--quick"],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout[r.stdout.index('{\n "bench"'):]
    rec = json.loads(text)
    assert rec["bench"] == name and rec["quick"] and rec["machine"]["cpus"] >= 1
    return rec["results"]


def test_prune_speed_quick():
    res = run_bench("prune_speed")
    assert 0 < res["prune_median_s"] < 5 and 0 < res["analytic_cost_median_ms"] < 50


def test_score_throughput_quick():
    res = run_bench("score_throughput")
    for k in ("bn", "train", "eval"):
        assert res[k]["bare_img_s"] > 0 and res[k]["prunetune_img_s"] > 0
    assert res["default_score_seconds"] > 0


def test_score_fidelity_quick():
    res = run_bench("score_fidelity")
    assert len(res["rows"]) == 4 and -1.0 <= res["tau_bn_plus_steps"] <= 1.0
    assert all(0.0 <= r["final_test_acc"] <= 1.0 for r in res["rows"])
