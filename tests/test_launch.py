"""The whole command through the real command line: local Ray, a real SQLite study, the
real optuna-dashboard over HTTP, loopback-only sockets, and a finished run refusing another
configuration. (A timm network on the embedded data, killed and resumed: tests/test_faults.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Callable

import optuna
import pytest
from optuna.trial import TrialState

from prunetune.evaluators import load_pruned, model_cost
from prunetune.search import dominates

from conftest import _free_port, alive_in_session, launch

pytestmark = pytest.mark.slow

TINY = ["--per-class", "20", "--width", "0.25", "--input-size", "32", "--refine-steps", "4,8",
        "--sensitivity-probes", "0.5",
        "--base-epochs", "1", "--bn-batches", "2", "--score-steps", "4", "--batch-size", "32",
        "--final-epochs", "1", "--workers", "2", "--cpus", "2", "--latency-threads", "1"]


@pytest.fixture(scope="module")
def tiny(cifar_dir: str) -> list[str]:
    """TINY on the CIFAR-like data this session generates (a fixture: it is made at run time)."""
    return ["--data", cifar_dir, *TINY]


def study_of(out) -> optuna.Study:
    return optuna.load_study(study_name="prunetune", storage=f"sqlite:///{out}/study.db")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def listening_sockets(ours: Callable[[int], bool]) -> set[str]:
    """The addresses that processes ``ours(pid)`` listen on (what else listens on this machine
    is not this run's business)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        if any(ours(pid) for pid in pids):
            found.add(line.split()[3])
    return found


def in_session(pid: int, sid: int) -> bool:
    try:
        return os.getsid(pid) == sid
    except OSError:  # gone
        return False


def test_end_to_end_with_dashboard_and_loopback_only(tmp_path, tiny):
    out = tmp_path / "run"
    proc = launch("--budget", "50%-FLOPs", "--trials", "5", "--out", str(out), *tiny)
    port = _free_port()
    dash = None
    seen_trials, seen_sockets = [], set()
    try:
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline:
            seen_sockets |= listening_sockets(
                lambda pid: in_session(pid, proc.pid) or (dash is not None and pid == dash.pid))
            if dash is None and (out / "study.db").exists():
                dash = subprocess.Popen(
                    [os.path.join(os.path.dirname(sys.executable), "optuna-dashboard"),
                     f"sqlite:///{out}/study.db", "--host", "127.0.0.1", "--port", str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if dash is not None:
                try:
                    studies = get_json(f"http://127.0.0.1:{port}/api/studies")
                    if studies["study_summaries"]:
                        sid = studies["study_summaries"][0]["study_id"]
                        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{sid}")
                        seen_trials.append(sum(t["state"] == "Complete"
                                               for t in detail["trials"]))
                except (OSError, KeyError):
                    pass  # the dashboard is still starting
            time.sleep(0.5)
        log = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if dash is not None:
            dash.terminate()
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    # Ray's own notices stay off the user's screen: token auth said in the start line, and no
    # warning about the refinement actors' constructor arguments (there are none).
    assert "loopback only, token auth on" in log and "Token authentication is" not in log
    assert "constructor arguments" not in log, log[-3000:]
    # The command shut its Ray down as it left (it skips the interpreter's tear-down): none of
    # the Ray processes it started outlives it for more than a moment.
    deadline = time.time() + 10
    while alive_in_session(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive_in_session(proc.pid), alive_in_session(proc.pid)

    # The study holds exactly the requested completed trials, run two at a time.
    study = study_of(out)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 5
    # Two trials were in flight at once (the second asked before the first was told), run by
    # at most two trial processes (one reused actor may run both when trials are this short).
    spans = sorted((t.datetime_start, t.datetime_complete) for t in done)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans
    assert 1 <= len({t.user_attrs["pid"] for t in done}) <= 2
    assert sum(t.user_attrs.get("baseline") == "uniform" for t in done) == 1
    # The dashboard answered with the trials while the search wrote them.
    # (polled only while the search process ran, so these reads overlapped its writes)
    assert seen_trials and max(seen_trials) >= 1, seen_trials
    assert min(seen_trials) < 5, seen_trials

    # Every front point meets the budget and none dominates another.
    cfg = json.load(open(out / "config.json"))
    assert cfg["study"]["budget"] == ["50%-FLOPs"]
    pareto = json.load(open(out / "pareto.json"))
    from prunetune.spaces import get_space
    from prunetune.evaluators import policy_cost
    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    base_flops = policy_cost(space, space.uniform(1.0), 32).flops
    assert pareto and all(r["flops"] <= 0.5 * base_flops for r in pareto)
    pts = [(r["accuracy"], r["flops"], r["latency_ms"]) for r in pareto]
    assert not any(dominates(p, q, [True, False, False]) for p in pts for q in pts)
    assert all(t.user_attrs["flops"] <= 0.5 * base_flops for t in done)
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "Pareto front" in log and "ETA" in log

    # The finals are the pick plus the uniform-width baseline given the same fine-tune, or
    # uniform alone when it is the pick. Which one happens depends on the data (in this tiny run
    # uniform won on real CIFAR-10; on the generated data a searched candidate can win).
    run_summary = json.load(open(out / "summary.json"))
    tags = [f["tag"] for f in run_summary["final"]]
    assert sorted(p.name for p in (out / "final").iterdir()) == sorted(tags)
    assert tags[-1] == "uniform" and len(tags) == (1 if tags[0] == "uniform" else 2), tags
    # Each final loads from its files alone and costs what its trial recorded, within budget.
    flops_of = {t.number: t.user_attrs["flops"] for t in done}
    for tag in tags:
        model, _, spec = load_pruned(str(out / "final" / tag / "model"))
        summary = json.load(open(out / "final" / tag / "summary.json"))
        assert model_cost(model, 32).flops == summary["flops"] == flops_of[summary["trial"]]
        assert summary["flops"] <= 0.5 * base_flops
        assert 0.0 <= summary["test_acc"] <= 1.0
        assert (out / "final" / tag / "model.onnx").exists()

    # Nothing the run opened listened beyond loopback.
    wide = [a for a in seen_sockets if not a.startswith(("127.", "[::1]", "[::ffff:127."))]
    assert seen_sockets, "expected Ray and the dashboard to listen on something"
    assert not wide, wide

    # The finished run resumed with another budget is refused in one line, its study untouched.
    digest = hashlib.sha256((out / "study.db").read_bytes()).hexdigest()
    other = launch("--budget", "40%-FLOPs", "--trials", "5", "--out", str(out), *tiny)
    log = other.communicate(timeout=120)[0]
    assert other.returncode == 2, log[-2000:]
    assert "different configuration" in log and "40%-FLOPs" in log, log[-2000:]
    assert len(log.strip().splitlines()) == 1 and "Traceback" not in log, log[-2000:]
    assert hashlib.sha256((out / "study.db").read_bytes()).hexdigest() == digest
