"""CUDA specifics of every stage. Deselected by default (pyproject: -m 'not needs_cuda');
``bench/gpu_check.sh`` runs them with ``-m needs_cuda`` on a machine with a GPU, and there
they are skipped, with the reason, only if torch sees none."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from prunetune.evaluators import (CandidateEvaluator, FinetuneConfig, ScoreConfig, finetune,
                                  get_latency_table, load_data, load_pruned, measure_latency,
                                  resolve_device, resolve_precision, score_candidate,
                                  train_steps)
from prunetune.spaces import get_space

pytestmark = [pytest.mark.needs_cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU that torch can use")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small(cifar_dir):
    return load_data(cifar_dir, per_class=40, test_per_class=10, seed=0)


@pytest.fixture(scope="module")
def space():
    return get_space("mobilenet_v2", width_mult=0.5, num_classes=10)


@pytest.fixture(scope="module")
def base(space, small):
    torch.manual_seed(0)
    m = space.build_model().cuda()
    train_steps(m, small, 30, lr=0.05, batch_size=32, gen=torch.Generator().manual_seed(0))
    return m.eval()


def test_auto_means_the_gpu_and_its_fast_precision():
    assert resolve_device("auto") == "cuda"
    want = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto", "cuda") == want


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                             ("fp32", torch.float32)])
def test_training_on_the_gpu_in_each_precision(space, small, precision, dtype):
    torch.manual_seed(0)
    m = space.build_model().cuda()
    seen: list[torch.dtype] = []
    conv = next(x for x in m.modules() if isinstance(x, torch.nn.Conv2d))
    h = conv.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in m.parameters()]
    losses: list[float] = []
    train_steps(m, small, 20, lr=0.05, batch_size=32, gen=torch.Generator().manual_seed(0),
                precision=precision, on_step=lambda s, loss: losses.append(loss))
    h.remove()
    assert set(seen) == {dtype} and all(p.is_cuda and p.dtype == torch.float32
                                        for p in m.parameters())
    assert len(losses) == 20 and all(v == v and abs(v) < 1e4 for v in losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_gpu_and_cpu_scores_agree(space, small, base):
    """Adaptive BN + validation (no training steps) computes the same thing on both devices
    (TF32 off: full fp32 on both)."""
    import copy

    ch = space.channels(space.uniform(0.5))
    cfg = ScoreConfig(bn_batches=4, steps=0, batch_size=32, rank_by="loss")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        on_gpu, m = score_candidate(base, space, small, ch, cfg)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    on_cpu, _ = score_candidate(copy.deepcopy(base).cpu(), space, small, ch, cfg)
    assert next(m.parameters()).is_cuda
    assert on_gpu.metrics["loss"] == pytest.approx(on_cpu.metrics["loss"], rel=1e-3)


def test_quick_score_trains_on_the_gpu(space, small, base):
    res, m = score_candidate(base, space, small, space.channels(space.uniform(0.5)),
                             ScoreConfig(bn_batches=2, steps=10, batch_size=32, distill=True,
                                         rank_by="kl"))
    assert res.failure is None and next(m.parameters()).is_cuda and res.score < 0


def test_evaluator_runs_a_trial_on_the_gpu(space, small, base):
    ev = CandidateEvaluator(space.name, space.config(),
                            {k: v.cpu() for k, v in base.state_dict().items()}, small,
                            score=ScoreConfig(bn_batches=2, steps=4, batch_size=32),
                            deploy_size=32, latency="measure", device="cuda")
    out = ev({"channels": space.channels(space.uniform(0.5))})
    assert "failure" not in out, out
    assert out["attrs"]["device"].startswith("cuda (") and out["latency_ms"] > 0
    assert out["attrs"]["latency"]["device"] == "cuda"


def test_finetune_on_the_gpu_resumes_from_its_checkpoint(space, small, base, tmp_path):
    torch.manual_seed(0)
    m = space.build_model().cuda()
    cfg = FinetuneConfig(epochs=2, batch_size=32)

    def stop_after_epoch_1(line: str) -> None:
        if "epoch 1/2" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(m, small, cfg, str(tmp_path), teacher=base, log=stop_after_epoch_1)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert "cuda_rng" in ck  # dropout's CUDA RNG is restored on resume, not re-seeded
    logs: list[str] = []
    out = finetune(m, small, cfg, str(tmp_path), teacher=base, log=logs.append)
    assert any("resuming after epoch 1/2" in x for x in logs) and out["distilled"]
    assert out["config"]["precision"] == "auto" and next(m.parameters()).is_cuda


def test_cuda_latency_uses_events_and_the_table_is_keyed_by_the_gpu(space, tmp_path):
    m = space.build_model()
    lat = measure_latency(m, 64, device="cuda", warmup=3, repeats=10)
    assert lat.device == "cuda" and 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms
    assert next(m.parameters()).device.type == "cpu"  # a copy was moved, not the model
    table = get_latency_table(space, 32, folder=str(tmp_path), device="cuda",
                              log=lambda s: None)
    assert table.key["device"] == "cuda"
    assert table.key["device_name"] == torch.cuda.get_device_name()


def test_search_on_the_gpu_end_to_end(cifar_dir, tmp_path):
    """The command line with --device cuda: base, trials (Ray GPU resources), refinement,
    final fine-tune, latency and export all on the GPU; the export reloads on the CPU."""
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--budget", "50%-FLOPs",
           "--data", cifar_dir, "--per-class", "30", "--width", "0.5", "--input-size", "32",
           "--base-epochs", "2", "--trials", "4", "--workers", "2", "--score-steps", "10",
           "--bn-batches", "2", "--refine-top", "2", "--refine-steps", "10",
           "--final-epochs", "1", "--device", "cuda", "--out", str(out)]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "device: cuda (" in r.stdout and "trials on 0.5 GPU each" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"] and summary["base"]["test_acc"] > 0
    import optuna

    study = optuna.load_study(study_name="prunetune", storage=f"sqlite:///{out}/study.db")
    devices = [t.user_attrs.get("device", "") for t in study.get_trials(deepcopy=False)
               if t.state == optuna.trial.TrialState.COMPLETE]
    # Ray set each trial's visible GPU (an index or a UUID, whatever the host exposes).
    assert devices and all(d.startswith("cuda (") and "CUDA_VISIBLE_DEVICES=None" not in d
                           and not d.endswith("CUDA_VISIBLE_DEVICES=)") for d in devices), devices
    final = out / "final" / summary["final"][0]["tag"]
    fin = json.loads((final / "summary.json").read_text())
    assert fin["latency"]["device"] == "cuda" and fin["config"]["precision"] == "auto"
    model, _, _ = load_pruned(str(final / "model"))
    assert next(model.parameters()).device.type == "cpu"
    assert (final / "model.onnx").exists() or (final / "model.torchscript.pt").exists()


def test_final_fine_tune_as_a_ray_task_gets_a_gpu(space, small, base, tmp_path):
    """A driver on the CPU (e.g. a CPU node of a GPU cluster) sends the final fine-tune to a Ray
    task with a GPU (``--final-on ray``/``auto``); the model comes back and is finished here."""
    import copy

    import ray

    from prunetune.evaluators import channels_cost
    from prunetune.search import init_ray, run_finals

    pol = space.uniform(0.5)
    channels = space.channels(pol)
    record = {"trial": 7, "baseline": None, "policy": pol, "channels": channels,
              "accuracy": 0.0, "flops": channels_cost(space, channels, 32).flops}
    logs: list[str] = []
    init_ray(None, 2, num_gpus=1, log=logs.append)
    try:
        finals = run_finals([record], space, copy.deepcopy(base).cpu(), small,
                            FinetuneConfig(epochs=1, batch_size=32), str(tmp_path),
                            importance="l1", bn_batches=2, deploy_size=32, latency_threads=1,
                            do_export=False, device="cpu",
                            ray_resources={"num_cpus": 1, "num_gpus": 1}, log=logs.append)
    finally:
        ray.shutdown()
    assert any("[trial7] on " in x and ", cuda (" in x for x in logs), logs
    assert any("[trial7] fine-tune epoch 1/1" in x for x in logs), logs
    fin = json.loads((tmp_path / "final" / "trial7" / "summary.json").read_text())
    assert fin["distilled"] and fin["flops"] == record["flops"]
    assert finals[0]["test_acc"] == fin["test_acc"] and fin["latency"]["device"] == "cpu"
