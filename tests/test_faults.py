"""Faults against the real thing: a trial worker SIGKILLed, the driver SIGKILLed during the
final fine-tune, Ctrl-C. (A cluster losing a node, and a token-authenticated head:
tests/test_cluster.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import launch, processes

pytestmark = pytest.mark.slow

# No --refine-steps: every run here gives --refine-top 0 (no refinement), which refuses them.
TINY = ["--per-class", "20", "--width", "0.25", "--input-size", "32",
        "--base-epochs", "0", "--bn-batches", "2", "--batch-size", "32", "--latency", "off",
        "--objectives", "accuracy,flops", "--export", "none"]


@pytest.fixture(scope="module")
def tiny(cifar_dir: str) -> list[str]:
    """TINY on the CIFAR-like data this session generates (a fixture: it is made at run time)."""
    return ["--data", cifar_dir, *TINY]


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


@pytest.mark.parametrize("max_failures", [0])  # retried (max_failures > 0): tests/test_soak.py
def test_worker_sigkill_mid_trial(tmp_path, max_failures, tiny):
    """Retried when retries are allowed (the quick soak kills workers with retries on);
    recorded as failed with its reason when not. Either way the study completes with every
    trial it asked for and none left RUNNING."""
    out = tmp_path / "run"
    storage = f"sqlite:///{out}/study.db"
    # 80 steps: each trial runs for seconds (~3.5 s here), so the kill lands mid-trial, not at
    # a hand-over (a kill at the hand-over also fails the next trial, PENDING on the dying
    # worker).
    proc = launch("--budget", "50%-FLOPs", "--trials", "3", "--workers", "1", "--cpus", "2",
                  "--score-steps", "80", "--max-failures", str(max_failures),
                  "--final-epochs", "0", "--out", str(out), *tiny, "--refine-top", "0")
    killed, first_done = None, None
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline and killed is None:
            pids = trial_workers(proc.pid)
            # Kill a study trial: not after the last one (refinement would own the workers).
            if pids and 1 <= len(completed(storage)) < 3:
                first_done = first_done or time.time()
                # Kill mid-trial, not at the hand-over: the next trial starts within ~0.1 s of
                # the first one's completion, and Ray Tune never retries a trial that dies
                # while still PENDING (TuneController._process_trial_failure), whatever
                # --max-failures says. Trials here run for several seconds.
                if time.time() - first_done >= 1.5:
                    # Every trial actor present: with one worker only one runs a trial; an
                    # idle actor left from the previous trial may be listed first.
                    killed = pids[0]
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        log = proc.communicate(timeout=400)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, "never saw a trial worker to kill"
    assert proc.returncode == 0, log[-3000:]
    study = optuna.load_study(study_name="prunetune", storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert not study.get_trials(states=(TrialState.RUNNING,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    if max_failures == 0:
        assert len(failed) == 1, [t.state for t in study.trials]
        rows = [json.loads(l) for l in open(out / "failures.jsonl")]
        assert len(rows) == 1 and rows[0]["reason"] and "failed:" in log
    else:
        assert not failed, "a retried trial must not be recorded as failed"
        # The three trials asked for and nothing else (no start point beyond them waiting).
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3, study.trials


@pytest.mark.parametrize("final_on,epochs,sig", [("driver", 3, signal.SIGKILL),
                                                  ("ray", 8, signal.SIGINT)])
def test_driver_stopped_during_final_finetune_resumes(tmp_path, tiny, final_on, epochs, sig):
    """SIGKILL of the driver fine-tuning in-process, or Ctrl-C (SIGINT) of one whose final
    runs as a Ray task checkpointing into the (shared) run folder: Ctrl-C stops the command at
    once (exit 130; Ray Tune's handler, left installed after the search, once swallowed it)
    and cancels the task, which may still finish the epoch under way (a SIGKILLed driver's
    task would go on for seconds, until Ray's processes notice)."""
    out = tmp_path / "run"
    # One final fine-tune: without --no-final-baseline, uniform width is fine-tuned after the
    # pick whenever the pick is not uniform (data-dependent), and its own epoch 1 would print.
    args = ["--budget", "50%-FLOPs", "--trials", "2", "--score-steps", "2", "--refine-top", "0",
            "--final-epochs", str(epochs), "--no-final-baseline", "--final-on", final_on,
            "--out", str(out), *tiny]
    proc = launch(*args)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if f"fine-tune epoch 1/{epochs}" in line:
                if sig == signal.SIGINT:
                    os.kill(proc.pid, sig)
                    t0 = time.time()
                    seen.append(proc.communicate(timeout=60)[0])
                    assert proc.returncode == 130 and time.time() - t0 < 30, "".join(seen)
                    assert "prunetune: interrupted" in "".join(seen)
                else:
                    os.killpg(proc.pid, sig)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any(f"fine-tune epoch 1/{epochs}" in l for l in seen), "".join(seen)[-2000:]
    again = launch(*args)
    log = again.communicate(timeout=400)[0]
    assert again.returncode == 0, log[-3000:]
    resumed = re.search(rf"resuming after epoch (\d+)/{epochs}", log)
    assert resumed, log[-3000:]
    after = int(resumed.group(1))
    # A cancelled Ray task may still finish its epochs before it stops (seen once: all 8 of
    # these tiny ones); the resumed run then takes its finished checkpoint as it stands.
    assert (after == 1 if final_on == "driver" else 1 <= after <= epochs), log[-3000:]
    assert f"fine-tune epoch {after}/{epochs}" not in log
    if after < epochs:
        assert f"fine-tune epoch {epochs}/{epochs}" in log
        # A Ray task's lines come through tagged with its final; the driver's do not.
        assert (f"] fine-tune epoch {epochs}/{epochs}" in log) == (final_on == "ray"), log[-3000:]
    storage = f"sqlite:///{out}/study.db"
    assert len(completed(storage)) == 2  # the search was not re-run
    finals = [d for d in (out / "final").iterdir() if d.is_dir()]
    assert len(finals) == 1
    lines = open(finals[0] / "log.jsonl").read().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == list(range(1, epochs + 1))


def test_ctrl_c_during_the_search_stops_at_once_keeping_its_trials(tmp_path, tiny):
    """Ctrl-C (SIGINT) while Ray Tune runs trials is a KeyboardInterrupt (Tune's own handler,
    which only winds the current Tuner.fit down, is off): exit 130 in seconds with one line
    saying how to continue, the completed trials kept."""
    out = tmp_path / "run"
    storage = f"sqlite:///{out}/study.db"
    args = ["--budget", "50%-FLOPs", "--trials", "3", "--workers", "1", "--cpus", "2",
            "--score-steps", "30", "--final-epochs", "0", "--refine-top", "0",
            "--out", str(out), *tiny]
    proc = launch(*args)
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and not completed(storage):
            time.sleep(0.2)
        kept = {t.number: tuple(t.values) for t in completed(storage)}
        os.kill(proc.pid, signal.SIGINT)
        t0 = time.time()
        log = proc.communicate(timeout=60)[0]
        stopped_in = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert kept and len(kept) < 3, log[-2000:]
    assert proc.returncode == 130 and stopped_in < 30, (proc.returncode, stopped_in, log[-2000:])
    assert log.rstrip().endswith("Re-run the same command (same --out) to continue."), log[-500:]
    # What was completed is in the study as it was (a re-run continues from there, as after
    # the SIGKILL in test_launch.py).
    assert {t.number: tuple(t.values) for t in completed(storage)
            if t.number in kept} == kept
