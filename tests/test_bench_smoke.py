"""Each benchmark runs end to end in its --quick mode and reports numbers of the right kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_env(data_root, base_ckpt) -> dict[str, str]:
    """The benchmarks read data/cifar10 and models/mobilenet_v2_cifar10.pt under
    $PRUNETUNE_SHARED: point it at the generated stand-in (base trained by then)."""
    return dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PRUNETUNE_SHARED=str(data_root))


def run_bench(name: str, env: dict[str, str]) -> dict:
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), name, "--quick"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout[r.stdout.index('{\n "bench"'):]
    rec = json.loads(text)
    assert rec["bench"] == name and rec["quick"] and rec["machine"]["cpus"] >= 1
    return rec["results"]


def test_prune_speed_quick(bench_env):
    res = run_bench("prune_speed", bench_env)
    for name in ("mobilenet_v2", "mobilenet_v3_large", "resnet18", "resnet50"):
        r = res[name]
        assert 0 < r["prune_median_s"] < 10 and 0 < r["analytic_cost_median_ms"] < 50, name
        assert r["groups"] >= 10 and r["layers"] > r["groups"] and r["analyse_s"] > 0


def test_score_throughput_quick(bench_env):
    res = run_bench("score_throughput", bench_env)
    for k in ("bn", "train", "eval"):
        assert res[k]["bare_img_s"] > 0 and res[k]["prunetune_img_s"] > 0
    assert res["default_score_seconds"] > 0


def test_score_fidelity_quick(bench_env):
    res = run_bench("score_fidelity", bench_env)
    assert len(res["rows"]) == 4 and -1.0 <= res["tau_bn_plus_steps"] <= 1.0
    assert all(0.0 <= r["final_test_acc"] <= 1.0 for r in res["rows"])


def test_importance_at_budget_quick(bench_env):
    res = run_bench("importance_at_budget", bench_env)
    assert set(res["allocations"]) == {"uniform", "cost_-0.5"}
    for row in res["allocations"].values():
        accs = row["test_acc"]
        assert len(accs["l1"]) == len(accs["taylor"]) == 2
        assert all(0.0 <= a <= 1.0 for a in accs["l1"] + accs["taylor"])
        assert row["taylor_minus_l1_pp"] == pytest.approx(
            100 * sum(t - l for t, l in zip(accs["taylor"], accs["l1"])) / 2)


def test_gpu_throughput_quick(bench_env):
    """The GPU benchmark's CPU arm (its CUDA arms run where a GPU is: bench/gpu_check.sh)."""
    import torch

    res = run_bench("gpu_throughput", bench_env)
    assert res["train_images_per_s"]["cpu-fp32-32px"] > 0
    assert res["score_seconds"]["cpu-fp32"] > 0 and res["latency_ms"]["cpu-32px-batch1"] > 0
    assert ("cuda-bf16-32px" in res["train_images_per_s"]) == torch.cuda.is_available()


def test_latency_runtimes_quick(bench_env):
    res = run_bench("latency_runtimes", bench_env)
    names = [r["name"] for r in res["rows"]]
    assert names[0] == "dense" and "uniform_50%_round16" in names
    assert all(r["torch_1t_ms"] > 0 and r["onnxruntime_1t_ms"] > 0 for r in res["rows"])
    assert all(0 < r["flops_fraction"] <= 0.5 for r in res["rows"][1:])
