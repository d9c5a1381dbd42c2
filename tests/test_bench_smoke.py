"""Each benchmark runs end to end in its --quick mode and reports numbers of the right kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


SMOKED = ("prune_speed", "score_throughput", "score_fidelity", "importance_at_budget",
          "gpu_throughput", "latency_runtimes")


@pytest.fixture(scope="module")
def quick_results(data_root, base_ckpt) -> dict[str, dict]:
    """Every benchmark here in --quick mode, run by one ``bench/run.py`` command (one process:
    its start-up paid once), each record checked for its kind. The benchmarks read
    data/cifar10 and models/mobilenet_v2_cifar10.pt under $PRUNETUNE_SHARED: pointed at the
    generated stand-in (base trained by then)."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PRUNETUNE_SHARED=str(data_root))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), *SMOKED,
                        "--quick"], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    records, decoder, at = {}, json.JSONDecoder(), 0
    while (at := r.stdout.find('{\n "bench"', at)) >= 0:
        rec, at = decoder.raw_decode(r.stdout, at)
        assert rec["quick"] and rec["machine"]["cpus"] >= 1 and rec["seconds"] > 0
        records[rec["bench"]] = rec["results"]
    assert list(records) == list(SMOKED), list(records)
    return records


def test_prune_speed_quick(quick_results):
    res = quick_results["prune_speed"]
    for name in ("mobilenet_v2", "mobilenet_v3_large", "resnet18", "resnet50"):
        r = res[name]
        assert 0 < r["prune_median_s"] < 10 and 0 < r["analytic_cost_median_ms"] < 50, name
        assert r["groups"] >= 10 and r["layers"] > r["groups"] and r["analyse_s"] > 0


def test_score_throughput_quick(quick_results):
    res = quick_results["score_throughput"]
    for k in ("bn", "train", "eval"):
        assert res[k]["bare_img_s"] > 0 and res[k]["prunetune_img_s"] > 0
    assert res["default_score_seconds"] > 0


def test_score_fidelity_quick(quick_results):
    res = quick_results["score_fidelity"]
    assert len(res["rows"]) == 4 and -1.0 <= res["tau_bn_plus_steps"] <= 1.0
    assert all(0.0 <= r["final_test_acc"] <= 1.0 for r in res["rows"])


def test_importance_at_budget_quick(quick_results):
    res = quick_results["importance_at_budget"]
    assert set(res["allocations"]) == {"uniform", "cost_-0.5"}
    for row in res["allocations"].values():
        accs = row["test_acc"]
        assert len(accs["l1"]) == len(accs["taylor"]) == 2
        assert all(0.0 <= a <= 1.0 for a in accs["l1"] + accs["taylor"])
        assert row["taylor_minus_l1_pp"] == pytest.approx(
            100 * sum(t - l for t, l in zip(accs["taylor"], accs["l1"])) / 2)


def test_gpu_throughput_quick(quick_results):
    """The GPU benchmark's CPU arm (its CUDA arms run where a GPU is: bench/gpu_check.sh)."""
    import torch

    res = quick_results["gpu_throughput"]
    assert res["train_images_per_s"]["cpu-fp32-32px"] > 0
    assert res["score_seconds"]["cpu-fp32"] > 0 and res["latency_ms"]["cpu-32px-batch1"] > 0
    assert ("cuda-bf16-32px" in res["train_images_per_s"]) == torch.cuda.is_available()


def test_latency_runtimes_quick(quick_results):
    res = quick_results["latency_runtimes"]
    names = [r["name"] for r in res["rows"]]
    assert names[0] == "dense" and "uniform_50%_round16" in names
    assert all(r["torch_1t_ms"] > 0 and r["onnxruntime_1t_ms"] > 0 for r in res["rows"])
    assert all(0 < r["flops_fraction"] <= 0.5 for r in res["rows"][1:])
