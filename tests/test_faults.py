"""Faults against the real thing: a trial worker SIGKILLed, the driver SIGKILLed during the
final fine-tune, Ctrl-C, a two-node Ray cluster on loopback losing a node while it searches a
user's file network, a PostgreSQL study read by optuna-dashboard, and a token-authenticated
`ray start` head taking the command through `ray job submit`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from _networks import NET
from conftest import ROOT, _free_port, launch, processes, wait_for_ray_to_exit

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


def test_two_node_cluster_postgres_and_dashboard(tmp_path, postgres_url, tiny):
    """Head + second node on 127.0.0.1; a search of a network from a user's file (outside the
    checkout, deleted once the search is under way: only the driver ever read it) attached
    with --address writes a PostgreSQL study; trials run on both nodes, which rebuild the
    network from the source the driver sent; the second node is removed mid-search without
    losing a completed trial; the final fine-tune runs as a Ray task on the cluster, its pick
    within budget with analytic FLOPs == counted, exported to ONNX and reloaded;
    optuna-dashboard reads the PostgreSQL study over HTTP."""
    import numpy as np
    import onnxruntime
    import torch
    from ray.cluster_utils import Cluster

    from prunetune.evaluators import load_pruned, model_cost, policy_cost
    from prunetune.spaces import get_space

    net_file = tmp_path / "driver_only" / "mynet.py"
    net_file.parent.mkdir()
    net_file.write_text(NET)
    space = get_space(f"{net_file}:make", num_classes=10)
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 32).flops
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=1)
    out = tmp_path / "run"
    # Trials long enough (60 quick steps) that the second node's first worker, which imports
    # torch while the head's trials already run, starts before the head has done them all.
    # The file network at its own width (it is small already), exported to ONNX.
    args = [a for a in tiny if a not in ("--export", "none", "--width", "0.25")]
    proc = launch("--model", f"{net_file}:make", "--budget", "50%-FLOPs", "--trials", "8",
                  "--workers", "2", "--cpus", "2", "--score-steps", "60", "--final-epochs", "1",
                  "--final-on", "ray", "--no-final-baseline", "--max-failures", "2",
                  "--refine-top", "0", "--address", cluster.address, "--storage", postgres_url,
                  "--out", str(out), *args)
    before_removal: dict[int, tuple] = {}
    dash = None
    try:
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline:
            done = completed(postgres_url)
            if done and net_file.exists():
                net_file.unlink()
            nodes = {t.user_attrs.get("ray_node_id") for t in done}
            if node is not None and len(done) >= 2 and len(nodes) >= 2:
                before_removal = {t.number: tuple(t.values) for t in done}
                cluster.remove_node(node)
                node = None
            time.sleep(0.3)
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, log[-3000:]
        assert not net_file.exists()
        assert before_removal, ("trials never ran on both nodes before the removal window",
                                [t.user_attrs.get("ray_node_id") for t in completed(postgres_url)])
        study = optuna.load_study(study_name="prunetune", storage=postgres_url)
        done = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(done) == 8
        assert len({t.user_attrs["ray_node_id"] for t in done}) == 2
        for number, values in before_removal.items():
            assert [tuple(t.values) for t in done if t.number == number] == [values]
        assert not study.get_trials(states=(TrialState.RUNNING,))
        assert all(t.user_attrs["flops"] <= limit for t in done)
        assert "2 node(s)" in log
        # The final fine-tune ran as a task on the cluster, its epoch line relayed here.
        assert "] fine-tune epoch 1/1" in log and "as a Ray task (0 GPU" in log, log[-3000:]
        finals = json.loads((out / "summary.json").read_text())["final"]
        assert finals
        for f in finals:
            model, space2, spec = load_pruned(str(out / "final" / f["tag"] / "model"))
            assert space2.group_names == space.group_names
            assert model_cost(model, 32).flops == f["flops"] <= limit
            x = torch.randn(2, 3, 32, 32)
            sess = onnxruntime.InferenceSession(str(out / "final" / f["tag"] / "model.onnx"))
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            with torch.no_grad():
                assert np.allclose(got, model.eval()(x).numpy(), atol=1e-4)

        port = _free_port()
        dash = subprocess.Popen([os.path.join(os.path.dirname(sys.executable),
                                              "optuna-dashboard"), postgres_url,
                                 "--host", "127.0.0.1", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        detail = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as r:
                    sid = json.loads(r.read())["study_summaries"][0]["study_id"]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{sid}",
                                            timeout=10) as r:
                    detail = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert detail is not None
        assert sum(t["state"] == "Complete" for t in detail["trials"]) == 8
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if dash is not None:
            dash.terminate()
        cluster.shutdown()


def test_ray_start_head_with_token_auth_and_ray_job_submit(tmp_path, tiny):
    """The README's cluster steps with a real `ray start --head` on loopback, token
    authentication on (Ray >= 2.59 turns it on for a head when a token exists in
    ~/.ray/auth_token): without RAY_AUTH_MODE=token the command stops with one line, within
    seconds, writing nothing; with it (the README's step), the same command submitted with
    `ray job submit` runs on the cluster, attached through the RAY_ADDRESS the job gets."""
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    port, dash_port = _free_port(), _free_port()
    home = tmp_path / "home"  # the head's token file lands here, not in the real home
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1", HOME=str(home))
    # As a user secures a head: a token first (`ray start` turns auth on when one exists).
    subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=120)
    subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--node-ip-address",
                    "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                    "--disable-usage-stats"], env=env, check=True, capture_output=True,
                   timeout=180)
    out = tmp_path / "run"
    command = [sys.executable, os.path.join(ROOT, "launch.py"), "--budget", "50%-FLOPs",
               "--trials", "2", "--score-steps", "2", "--final-epochs", "0", "--refine-top",
               "0", "--cpus", "2", "--out", str(out), *tiny]
    try:
        assert (home / ".ray" / "auth_token").is_file()
        t0 = time.time()
        r = subprocess.run([*command, "--address", f"127.0.0.1:{port}"], capture_output=True,
                           text=True, timeout=300, env=env)
        assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prunetune: error: "), r.stderr[-3000:]
        assert "RAY_AUTH_MODE=token" in lines[0] and not out.exists()
        assert time.time() - t0 < 90
        job_env = dict(env, RAY_AUTH_MODE="token", RAY_ADDRESS=f"http://127.0.0.1:{dash_port}")
        for _ in range(20):  # the head's job agent can take a while to come up on a busy host
            r = subprocess.run([ray_cli, "job", "submit", "--", *command], capture_output=True,
                               text=True, env=job_env, timeout=400)
            if "No available agent to submit job" not in r.stdout + r.stderr:
                break
            time.sleep(3)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert "succeeded" in r.stdout + r.stderr
        assert "Ray cluster at" in r.stdout  # the job attached to the running cluster
        assert len(completed(f"sqlite:///{out}/study.db")) == 2
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        wait_for_ray_to_exit()
