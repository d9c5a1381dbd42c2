"""A Ray cluster on loopback: a head and a second node searching a user's file network
into PostgreSQL (the node lost mid-search, optuna-dashboard reading the study), and a
token-authenticated `ray start` head taking the command through `ray job submit`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from _networks import NET
from conftest import ROOT, _free_port, launch, stop_session
from test_faults import completed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(cifar_dir: str) -> list[str]:
    from test_faults import TINY

    return ["--data", cifar_dir, "--per-class", "20", *TINY, "--latency", "off",
            "--objectives", "accuracy,flops", "--export", "none"]


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
    # Trials enough and long enough (12 of 60 quick steps; with 8, in one of five suites here the
    # head ran them all before the node's worker was up) that the second node's first worker,
    # which imports torch while the head's trials already run, starts before the head has done
    # them all. (More trials widen that window more cheaply than longer ones: the extra trials
    # are shared by two nodes until the second is removed; 12 cost 16 s more, 150 steps 27 s.)
    # The file network at its own width (it is small already), exported to ONNX.
    args = [a for a in tiny if a not in ("--export", "none", "--width", "0.25")]
    proc = launch("--model", f"{net_file}:make", "--budget", "50%-FLOPs", "--trials", "12",
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
                                [t.user_attrs.get("ray_node_id") for t in completed(postgres_url)],
                                log[-3000:])
        study = optuna.load_study(study_name="prunetune", storage=postgres_url)
        done = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(done) == 12
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
        assert sum(t["state"] == "Complete" for t in detail["trials"]) == 12
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
    # In a session of its own, which the head's daemons and the job's driver keep: stopping
    # that session stops this cluster alone (`ray stop` would stop every Ray on the machine,
    # a benchmark's beside the suite too).
    head = subprocess.Popen([ray_cli, "start", "--head", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dash_port), "--disable-usage-stats"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    started = head.communicate(timeout=180)[0]
    assert head.returncode == 0, started[-2000:]
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
        # At once: Ray's own attach retries for 20 s before it says only that it could not
        # connect; the head's refusal of a missing token is taken as the answer (~5 s here,
        # most of it the command's start).
        assert time.time() - t0 < 20, time.time() - t0
        job_env = dict(env, RAY_AUTH_MODE="token", RAY_ADDRESS=f"http://127.0.0.1:{dash_port}")
        # The head's job agent can take minutes to come up on a busy host: asked again until
        # it answers, for up to 5 minutes.
        deadline = time.time() + 300
        while True:
            r = subprocess.run([ray_cli, "job", "submit", "--", *command], capture_output=True,
                               text=True, env=job_env, timeout=400)
            if ("No available agent to submit job" not in r.stdout + r.stderr
                    or time.time() > deadline):
                break
            time.sleep(3)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert "succeeded" in r.stdout + r.stderr
        assert "Ray cluster at" in r.stdout  # the job attached to the running cluster
        assert len(completed(f"sqlite:///{out}/study.db")) == 2
    finally:
        stop_session(head.pid)
