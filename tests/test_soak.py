"""The soak benchmark's checks (bench/soak.py), the start-point requeue it found missing, and
one short soak: a real study on SQLite with a worker and the driver SIGKILLed."""

from __future__ import annotations

import os
import sys

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from optuna.distributions import FloatDistribution

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import soak  # noqa: E402
from soak import Row, check_front, check_trials, recomputed_front  # noqa: E402

from prunetune.search import close_orphans, enqueue_start_points  # noqa: E402

TAGS = ["uniform", "cost-aware a=-0.25"]


def clean_rows() -> list[Row]:
    return [Row(0, "COMPLETE", (0.7, 100.0), "uniform", "e0"),
            Row(1, "FAIL", None, "cost-aware a=-0.25", orphaned=True),  # enqueued again
            Row(2, "COMPLETE", (0.8, 90.0), "", "e2"),
            Row(3, "COMPLETE", (0.75, 80.0), "cost-aware a=-0.25", "e3")]


def test_check_trials_passes_a_clean_study():
    out = check_trials(clean_rows(), 3, TAGS, {0: (0.7, 100.0), 2: (0.8, 90.0)})
    assert out["ok"] and out["lost"] == 0 and out["duplicated"] == 0
    assert out["complete"] == 3 and out["states"] == {"COMPLETE": 3, "FAIL": 1}
    assert out["failed_orphaned_by_driver_kill"] == 1 and out["failed_other"] == 0


def test_check_trials_counts_a_start_point_completed_twice_as_duplicated():
    rows = clean_rows() + [Row(4, "COMPLETE", (0.7, 100.0), "uniform", "e4")]
    out = check_trials(rows, 4, TAGS, {})
    assert out["duplicated"] == 1 and out["start_points_duplicated"] == ["uniform"]
    assert not out["ok"]


def test_check_trials_counts_one_evaluation_in_two_trials_as_duplicated():
    rows = clean_rows() + [Row(4, "COMPLETE", (0.8, 90.0), "", "e2")]
    out = check_trials(rows, 4, TAGS, {})
    assert out["duplicated"] == 1 and out["evaluations_in_two_trials"] == 1 and not out["ok"]


def test_check_trials_counts_lost_start_points_changed_and_missing_trials():
    rows = [r for r in clean_rows() if r.number != 3]  # the orphaned start point never re-ran
    out = check_trials(rows, 3, TAGS, {0: (0.7, 100.0), 2: (0.8, 91.0)})
    assert out["start_points_lost"] == ["cost-aware a=-0.25"]
    assert out["changed_after_seen"] == [2]  # seen with other values
    assert out["lost"] == 3 and not out["ok"]  # the start point, trial 2, one trial short


def test_check_trials_refuses_running_or_waiting_trials_left():
    for state in ("RUNNING", "WAITING"):
        out = check_trials(clean_rows() + [Row(4, state)], 3, TAGS, {})
        assert out[state.lower()] == 1 and out["lost"] == 0 and not out["ok"]


def test_rate_by_window_counts_completions_a_minute_in_completion_order():
    rows = [Row(i, "COMPLETE", (0.5, 1.0), completed_at=1000.0 + (i if i < 4 else 10 * i))
            for i in range(8)] + [Row(8, "FAIL", completed_at=1001.0)]
    # 0-3 one a second (3 s for 4), then 40, 50, 60, 70 (30 s for 4).
    assert soak.rate_by_window(rows, 4) == [80.0, 8.0]


def test_recomputed_front_keeps_the_non_dominated_within_the_budget():
    rows = [Row(0, "COMPLETE", (0.7, 100.0)), Row(1, "COMPLETE", (0.8, 90.0)),
            Row(2, "COMPLETE", (0.75, 80.0)), Row(3, "COMPLETE", (0.9, 120.0)),
            Row(4, "FAIL"), Row(5, "COMPLETE", (0.75, 80.0))]
    assert recomputed_front(rows, 110.0) == [1, 2, 5]  # 0 dominated, 3 over the budget
    assert recomputed_front(rows, 200.0) == [1, 2, 3, 5]


def _front_study(url: str, name: str, attr_flops: list[float]) -> None:
    study = optuna.create_study(storage=url, study_name=name,
                                directions=["maximize", "minimize"])
    for (acc, flops), attr in zip([(0.7, 100.0), (0.8, 90.0), (0.75, 80.0), (0.9, 120.0)],
                                  attr_flops):
        study.add_trial(create_trial(
            values=[acc, flops], params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"flops": attr, "macs": attr / 2, "params": 1, "policy": {},
                        "channels": {}}))


def test_check_front_matches_and_tells_a_different_front(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/s.db"
    _front_study(url, soak.STUDY, [100.0, 90.0, 80.0, 120.0])
    out = check_front(url, soak.rows_of(url), 110.0)
    assert out["front"] == [1, 2] and out["equal_recomputed"] and out["equal_optuna_best_trials"]
    # Records whose FLOPs disagree with the values Optuna stored (trial 0 at 50, not 100):
    # prunetune's front, built from the records, differs from the recomputed one.
    monkeypatch.setattr(soak, "STUDY", "other")
    _front_study(url, "other", [50.0, 90.0, 80.0, 120.0])
    out = check_front(url, soak.rows_of(url), 110.0)
    assert out["front"] == [0, 1, 2] and out["recomputed"] == [1, 2]
    assert not out["equal_recomputed"] and not out["equal_optuna_best_trials"]


def test_resume_enqueues_again_only_start_points_the_stopped_driver_orphaned(tmp_path):
    """Found by the soak: a start point running when the driver was SIGKILLed was closed as
    FAIL on resume and never evaluated (uniform width or a prior missing from the study)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db",
                                directions=["maximize", "minimize"])
    pts = [("uniform", {"x": 1.0}), ("cost-aware a=-0.25", {"x": 0.3}),
           ("cost-aware a=-0.5", {"x": 0.4}), ("cost-aware a=-1", {"x": 0.5})]
    dist = {"x": FloatDistribution(0, 1)}
    assert enqueue_start_points(study, pts, 10) == 4
    t0 = study.ask(dist)
    study.tell(t0, [0.5, 1.0])
    study.ask(dist)  # the second start point, running when the driver dies
    t2 = study.ask(dist)
    study.tell(t2, state=TrialState.FAIL)  # failed on its own: not enqueued again
    assert close_orphans(study) == 1
    # Resumed: the orphaned start point again, nothing else (the fourth still waits).
    assert enqueue_start_points(study, pts, 10) == 1
    assert enqueue_start_points(study, pts, 10) == 0  # no second copy on a second resume
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["baseline"] for t in waiting) == ["cost-aware a=-0.25",
                                                                 "cost-aware a=-1"]
    assert [t.params for t in study.get_trials(states=(TrialState.FAIL,))
            if t.user_attrs["baseline"] == "cost-aware a=-0.25"] == [{"x": 0.3}]
    # No room beyond the trials asked for: with 2 left (1 complete of 3, 1 waiting) none.
    study2 = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="b",
                                 directions=["maximize", "minimize"])
    assert enqueue_start_points(study2, pts, 2) == 2
    study2.ask(dist)
    close_orphans(study2)
    assert enqueue_start_points(study2, pts, 2) == 1
    assert enqueue_start_points(study2, pts, 1) == 0


@pytest.mark.slow
def test_quick_soak_sqlite_worker_and_driver_killed(tmp_path):
    """A short soak on SQLite: the driver SIGKILLed while the start points run, then resumed,
    2 trial workers SIGKILLed; every trial once, every start point once, the front as
    recomputed from the storage."""
    res = soak.soak_once(f"sqlite:///{tmp_path}/study.db", str(tmp_path / "run"), trials=16,
                         kill_every=5, driver_kill_at=0, reap_wait=1.0, timeout=150.0,
                         log=lambda m: None)
    assert res["driver_kills"] == 1 and res["worker_kills"] >= 2, res
    assert res["complete"] == 16 and res["running"] == 0 and res["waiting"] == 0, res
    # The kill orphaned start points (the first trials): closed as FAIL, run again, once.
    assert res["states"].get("FAIL", 0) >= 1 and not res["start_points_lost"], res
    # Every worker killed mid-trial had its trial retried (Ray's max_failures), none FAILed.
    assert res["worker_kills_mid_evaluation"] >= 1 and res["failed_other"] == 0, res
    assert res["lost"] == 0 and res["duplicated"] == 0, res
    assert res["front"]["equal_recomputed"] and res["front"]["equal_optuna_best_trials"], res
    assert res["ok"] and res["driver_exit"] == 0


def test_a_start_point_a_round_left_running_is_enqueued_again_with_its_reason(tmp_path):
    """Within one run: a round of trials that ends with a start point still RUNNING (its
    worker lost at a hand-over) closes it as orphaned, saying so, and the next round runs it
    again, once."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db",
                                directions=["maximize", "minimize"])
    pts = [("uniform", {"x": 1.0}), ("cost-aware a=-0.5", {"x": 0.4})]
    assert enqueue_start_points(study, pts, 4) == 2
    dist = {"x": FloatDistribution(0, 1)}
    study.tell(study.ask(dist), [0.5, 1.0])
    lost = study.ask(dist)
    assert close_orphans(study, "its round ended without a result from it") == 1
    assert study.user_attrs[f"failure:{lost.number}"] == (
        "orphaned: its round ended without a result from it")
    assert enqueue_start_points(study, pts, 4) == 1
    assert [t.user_attrs["baseline"] for t in study.get_trials(states=(TrialState.WAITING,))
            ] == ["cost-aware a=-0.5"]
