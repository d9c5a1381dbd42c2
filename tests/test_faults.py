"""Faults against the real thing: a trial worker SIGKILLed, the driver SIGKILLed during the
final fine-tune, Ctrl-C. (A cluster losing a node, and a token-authenticated head:
tests/test_cluster.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
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


class _Lines:
    """The command's output lines as they come, read by a thread (the test polls meanwhile),
    which SIGKILLs the command's session the moment a line holds ``kill_at`` (an epoch of
    these tiny fine-tunes takes 0.2 s: a poll would see the next one done)."""

    def __init__(self, proc: subprocess.Popen, kill_at: str) -> None:
        self.lines: list[str] = []
        self.killed = threading.Event()

        def read() -> None:
            for line in proc.stdout:
                self.lines.append(line)
                if kill_at in line and not self.killed.is_set():
                    os.killpg(proc.pid, signal.SIGKILL)
                    self.killed.set()

        self._t = threading.Thread(target=read, daemon=True)
        self._t.start()

    def all(self) -> str:
        self._t.join(timeout=60)
        return "".join(self.lines)


def test_worker_killed_mid_trial_then_driver_killed_in_the_final_resumes(tmp_path, tiny):
    """One run, two faults. A trial worker SIGKILLed mid-trial with ``--max-failures 0``: the
    trial is recorded as failed with its reason (retried instead when retries are allowed:
    the quick soak kills workers with retries on), the study completes with every trial it
    asked for and none left RUNNING. Then the driver, fine-tuning the pick in-process, is
    SIGKILLed: the same command resumes the fine-tune from its last epoch, without running the
    search again."""
    out = tmp_path / "run"
    storage = f"sqlite:///{out}/study.db"
    # 80 steps: each trial runs for seconds (~3.5 s here), so the kill lands mid-trial, not at
    # a hand-over (a kill at the hand-over also fails the next trial, PENDING on the dying
    # worker). One final fine-tune: without --no-final-baseline, uniform width is fine-tuned
    # after the pick whenever the pick is not uniform (data-dependent).
    args = ["--budget", "50%-FLOPs", "--trials", "3", "--workers", "1", "--cpus", "2",
            "--score-steps", "80", "--max-failures", "0", "--final-epochs", "3",
            "--no-final-baseline", "--final-on", "driver", "--out", str(out), *tiny,
            "--refine-top", "0"]
    proc = launch(*args)
    lines = _Lines(proc, kill_at="fine-tune epoch 1/3")
    killed, first_done = None, None
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline and killed is None:
            pids = trial_workers(proc.pid)
            # Kill a study trial: not after the last one (refinement would own the workers).
            if pids and 1 <= len(completed(storage)) < 3:
                first_done = first_done or time.time()
                # Kill mid-trial, not at the hand-over: the next trial starts within ~0.1 s
                # of the first one's completion, and Ray Tune never retries a trial that
                # dies while still PENDING (TuneController._process_trial_failure),
                # whatever --max-failures says. Trials here run for several seconds.
                if time.time() - first_done >= 1.5:
                    # Every trial actor present: with one worker only one runs a trial; an
                    # idle actor left from the previous trial may be listed first.
                    killed = pids[0]
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        proc.wait(timeout=300)  # killed by the reader at the final's first epoch
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = lines.all()
    assert killed is not None, "never saw a trial worker to kill"
    assert lines.killed.is_set(), log[-3000:]
    assert "failed:" in log, log[-3000:]
    again = launch(*args)
    log = again.communicate(timeout=400)[0]
    assert again.returncode == 0, log[-3000:]
    resumed = re.search(r"resuming after epoch (\d+)/3", log)
    assert resumed and 1 <= int(resumed.group(1)) < 3, log[-3000:]  # one more may finish
    assert f"fine-tune epoch {resumed.group(1)}/3" not in log, log[-3000:]
    assert "fine-tune epoch 3/3" in log, log[-3000:]
    study = optuna.load_study(study_name="prunetune", storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3  # not run again
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 1, [t.state for t in study.trials]
    rows = [json.loads(x) for x in open(out / "failures.jsonl")]
    assert len(rows) == 1 and rows[0]["reason"]
    finals = [d for d in (out / "final").iterdir() if d.is_dir()]
    assert len(finals) == 1
    lines_ = open(finals[0] / "log.jsonl").read().splitlines()
    assert [json.loads(x)["epoch"] for x in lines_] == [1, 2, 3]


def test_ctrl_c_in_the_search_then_in_a_ray_final_each_resumed(tmp_path, tiny):
    """Ctrl-C (SIGINT) while Ray Tune runs trials is a KeyboardInterrupt (Tune's own handler,
    which only winds the current Tuner.fit down, is off): exit 130 in seconds with one line
    saying how to continue, the completed trials kept. The same command continues the search,
    then fine-tunes the pick as a Ray task checkpointing into the run folder; Ctrl-C there
    stops the command at once too (exit 130; Tune's handler, left installed after the search,
    once swallowed it) and cancels the task, which may still finish the epoch under way. The
    same command again resumes the fine-tune from its checkpoint."""
    out = tmp_path / "run"
    storage = f"sqlite:///{out}/study.db"
    args = ["--budget", "50%-FLOPs", "--trials", "3", "--workers", "1", "--cpus", "2",
            "--score-steps", "30", "--refine-top", "0", "--final-epochs", "8",
            "--no-final-baseline", "--final-on", "ray", "--out", str(out), *tiny]
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
    assert len(completed(storage)) == 3  # the search went on to its end
    assert {t.number: tuple(t.values) for t in completed(storage)
            if t.number in kept} == kept

    again = launch(*args)
    log = again.communicate(timeout=400)[0]
    assert again.returncode == 0, log[-3000:]
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
    assert len(completed(storage)) == 3  # the search was not re-run
    finals = [d for d in (out / "final").iterdir() if d.is_dir()]
    assert len(finals) == 1
    lines = open(finals[0] / "log.jsonl").read().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 9))
