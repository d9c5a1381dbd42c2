"""Faults against the real thing, in one run: a trial worker SIGKILLed, Ctrl-C in the search
and in a fine-tune on Ray, each continued by the same command. (The driver SIGKILLed
mid-search: the quick soak, tests/test_soak.py; a cluster losing a node, and a
token-authenticated head: tests/test_cluster.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime

import optuna
import pytest
import torch
from optuna.trial import TrialState

from prunetune.evaluators import load_pruned, model_cost, policy_cost
from prunetune.spaces import get_space

from conftest import launch, processes

pytestmark = pytest.mark.slow

# A quarter-width network at 32x32, no base training: seconds a trial.
TINY = ["--width", "0.25", "--input-size", "32", "--base-epochs", "0", "--bn-batches", "2",
        "--sensitivity-probes", "0.5",
        "--batch-size", "32"]


def trial_workers(session: int) -> list[int]:
    """PIDs of the Ray actor processes running trials (their title is ray::ImplicitFunc...)
    of the command started in ``session`` (its Ray and workers stay in it): no other Ray's."""
    def ours(comm: str, cmd: bytes) -> bool:
        return cmd.startswith(b"ray::ImplicitFunc")

    return [pid for pid in processes(ours) if _session_of(pid) == session]


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:  # gone
        return None


def completed(storage: str) -> list:
    try:
        study = optuna.load_study(study_name="prunetune", storage=storage)
    except Exception:  # noqa: BLE001 - not created yet
        return []
    return study.get_trials(states=(TrialState.COMPLETE,))


def running_for(storage: str) -> float:
    """Seconds the study's RUNNING trial has run (0 if none): a worker killed after a few
    tenths of them is killed mid-trial, not at a hand-over."""
    try:
        study = optuna.load_study(study_name="prunetune", storage=storage)
    except Exception:  # noqa: BLE001 - not created yet
        return 0.0
    starts = [t.datetime_start for t in study.get_trials(states=(TrialState.RUNNING,))]
    return max(((datetime.now() - s).total_seconds() for s in starts if s), default=0.0)


def test_a_worker_killed_and_ctrl_c_twice_each_resumed_on_a_timm_network(tmp_path):
    """One run of a timm network (``--model timm:resnet18``) on the embedded offline data (no
    --data), interrupted three ways, each time continued by the same command:

    1. A trial worker SIGKILLed mid-trial with ``--max-failures 0``: the trial is recorded as
       failed with its reason (retried instead when retries are allowed: the quick soak kills
       workers with retries on), and the search goes on. Then Ctrl-C (SIGINT) while Ray Tune
       runs trials is a KeyboardInterrupt (Tune's own handler, which only winds the current
       Tuner.fit down, is off): exit 130 in seconds with one line saying how to continue, the
       completed trials kept.
    2. The same command continues the search to its end, then fine-tunes the pick as a Ray
       task checkpointing into the run folder; Ctrl-C there stops the command at once too
       (exit 130; Tune's handler, left installed after the search, once swallowed it) and
       cancels the task, which may still finish the epoch under way.
    3. The same command resumes the fine-tune from its checkpoint, without searching again:
       every trial completed before an interruption kept once, unchanged; latency measured in
       the deployment runtime (onnxruntime) in each trial and for the final, which exports,
       reloads and costs what its trial recorded.
    (A driver SIGKILLed mid-search and resumed: the quick soak, tests/test_soak.py.)"""
    out = tmp_path / "run"
    storage = f"sqlite:///{out}/study.db"
    # 120 quick steps: a trial runs for ~2 s here, so a kill 0.5 s into one lands mid-trial,
    # not at a hand-over (a kill there also fails the next trial, PENDING on the dying worker).
    args = ["--model", "timm:resnet18", "--budget", "50%-FLOPs", "--trials", "4",
            "--workers", "1", "--cpus", "2", "--score-steps", "120", "--max-failures", "0",
            "--refine-top", "0", "--final-epochs", "8", "--no-final-baseline",
            "--final-on", "ray", "--latency", "measure", "--latency-runtime", "onnxruntime",
            "--objectives", "accuracy,flops", "--out", str(out), *TINY]
    proc = launch(*args)
    killed = None
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            done = len(completed(storage))
            if killed is None and done >= 1 and running_for(storage) >= 0.5:
                # Every trial actor: with one worker only one runs a trial, and an idle actor
                # left from the previous trial may be listed first.
                for pid in trial_workers(proc.pid):
                    killed = pid
                    os.kill(pid, signal.SIGKILL)
            if killed is not None and done >= 2:
                break
            time.sleep(0.1)
        kept = {t.number: tuple(t.values) for t in completed(storage)}
        os.kill(proc.pid, signal.SIGINT)
        t0 = time.time()
        log = proc.communicate(timeout=60)[0]
        stopped_in = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed is not None, ("never saw a trial worker to kill", log[-3000:])
    assert "failed:" in log, log[-3000:]
    assert 2 <= len(kept) < 4, (kept, log[-2000:])
    assert proc.returncode == 130 and stopped_in < 30, (proc.returncode, stopped_in, log[-2000:])
    assert log.rstrip().endswith("Re-run the same command (same --out) to continue."), log[-500:]
    assert "embedded digits" in log, log[-3000:]
    # What was completed is in the study as it was.
    assert {t.number: tuple(t.values) for t in completed(storage)
            if t.number in kept} == kept

    proc = launch(*args)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "fine-tune epoch 1/8" in line:
                os.kill(proc.pid, signal.SIGINT)
                t0 = time.time()
                seen.append(proc.communicate(timeout=60)[0])
                assert proc.returncode == 130 and time.time() - t0 < 30, "".join(seen)
                assert "prunetune: interrupted" in "".join(seen)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any("fine-tune epoch 1/8" in x for x in seen), "".join(seen)[-2000:]
    assert f"resume: the study holds {len(kept)} completed trial(s)" in "".join(seen)
    assert len(completed(storage)) == 4  # the search went on to its end

    again = launch(*args)
    log = again.communicate(timeout=400)[0]
    assert again.returncode == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    resumed = re.search(r"resuming after epoch (\d+)/8", log)
    assert resumed, log[-3000:]
    after = int(resumed.group(1))
    # A cancelled Ray task may still finish its epochs before it stops (seen once: all 8 of
    # these tiny ones); the resumed run then takes its finished checkpoint as it stands.
    assert 1 <= after <= 8, log[-3000:]
    assert f"fine-tune epoch {after}/8" not in log
    if after < 8:
        # A Ray task's lines come through tagged with its final; the driver's do not.
        assert "] fine-tune epoch 8/8" in log, log[-3000:]

    # The study: the trials asked for, none run again or left RUNNING; the killed one failed
    # with its reason, and the one Ctrl-C stopped (if one ran) was closed as orphaned.
    study = optuna.load_study(study_name="prunetune", storage=storage)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))
    rows = [json.loads(x) for x in open(out / "failures.jsonl")]
    assert len(rows) == 1 and rows[0]["reason"]
    failed = [t.number for t in study.get_trials(states=(TrialState.FAIL,))]
    orphans = [n for n in failed if n != rows[0]["trial"]]
    assert rows[0]["trial"] in failed and len(orphans) <= 1, [t.state for t in study.trials]
    assert all(study.user_attrs[f"failure:{n}"].startswith("orphaned") for n in orphans)
    for number, values in kept.items():  # completed before an interruption: kept, once
        assert [tuple(t.values) for t in done if t.number == number] == [values]
    assert len({json.dumps(t.user_attrs["policy"], sort_keys=True) for t in done}) >= 3
    assert {t.user_attrs["latency"]["runtime"] for t in done} == {"onnxruntime"}
    assert all(t.user_attrs["latency"]["median_ms"] > 0 for t in done)
    space = get_space("timm:resnet18", width_mult=0.25, num_classes=10)
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 32).flops
    assert all(t.user_attrs["flops"] <= limit for t in done)
    # The structured space's coordinates, not a keep-ratio per group.
    assert {"alpha", "toward_sensitivity", "depth_0"} <= set(done[0].params)
    assert not set(done[0].params) & set(space.group_names)

    # The final: its epochs once each, loaded from its files alone, costing what its trial
    # recorded, timed in onnxruntime.
    finals = json.load(open(out / "summary.json"))["final"]
    assert len(finals) == 1 and [d.name for d in (out / "final").iterdir() if d.is_dir()] == [
        finals[0]["tag"]]
    final = out / "final" / finals[0]["tag"]
    lines = open(final / "log.jsonl").read().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 9))
    summary = json.load(open(final / "summary.json"))
    assert summary["latency"]["runtime"] == "onnxruntime"
    model, space2, spec = load_pruned(str(final / "model"))
    assert spec["space"] == "timm:resnet18" and space2.group_names == space.group_names
    assert model_cost(model, 32).flops == finals[0]["flops"] <= limit
    assert (final / "model.onnx").exists()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
