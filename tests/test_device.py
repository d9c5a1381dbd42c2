"""The device plumbing on the CPU: the same code paths the GPU takes, with ``device="cpu"``
(CUDA specifics are in test_cuda.py, run by bench/gpu_check.sh where a GPU exists)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from prunetune.evaluators import (DeviceError, FinetuneConfig, ScoreConfig, finetune,
                                  load_data, resolve_device, resolve_precision, train_steps)
from prunetune.spaces import get_space


@pytest.fixture(scope="module")
def small(cifar_dir):
    return load_data(cifar_dir, per_class=24, test_per_class=5, seed=0)


@pytest.fixture(scope="module")
def tiny():
    return get_space("mobilenet_v2", width_mult=0.25, num_classes=10)


def test_device_names_resolve_or_say_the_fix():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == "cpu"
    with pytest.raises(DeviceError, match="'tpu' is not one of auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="'cuda:x' is not one of"):
        resolve_device("cuda:x")
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
        with pytest.raises(DeviceError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device("cuda")


def test_precision_resolves_per_device():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(DeviceError, match="'fp16' needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(DeviceError, match="'fp8' is not one of"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="`precision` must be one of"):
        ScoreConfig(precision="half")


def _conv_dtypes(model: torch.nn.Module) -> tuple[list[torch.dtype], object]:
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return seen, conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))


@pytest.mark.parametrize("precision,dtype", [("auto", torch.float32), ("fp32", torch.float32),
                                             ("bf16", torch.bfloat16)])
def test_train_steps_runs_in_the_precision_asked(tiny, small, precision, dtype):
    torch.manual_seed(0)
    model = tiny.build_model()
    before = [p.detach().clone() for p in model.parameters()]
    seen, hook = _conv_dtypes(model)
    losses: list[float] = []
    train_steps(model, small, 4, lr=0.05, batch_size=32, gen=torch.Generator().manual_seed(0),
                precision=precision, on_step=lambda s, loss: losses.append(loss))
    hook.remove()
    assert seen and set(seen) == {dtype}
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    # Master weights stay fp32 under autocast, and they moved.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_finetune_records_its_precision_and_resumes(tiny, small, tmp_path):
    torch.manual_seed(0)
    model = tiny.build_model()
    cfg = FinetuneConfig(epochs=2, batch_size=64, precision="bf16", distill=False)

    def stop_after_epoch_1(line: str) -> None:
        if "epoch 1/2" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(model, small, cfg, str(tmp_path), log=stop_after_epoch_1)
    logs: list[str] = []
    m2 = finetune(model, small, cfg, str(tmp_path), log=logs.append)
    assert any("resuming after epoch 1/2" in line for line in logs)
    assert m2["config"]["precision"] == "bf16" and 0.0 <= m2["test_acc"] <= 1.0
    assert [json.loads(x)["epoch"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert m2["epochs"] == 2


def test_resume_accepts_a_run_made_before_latency_device_existed(tmp_path):
    from prunetune import cli

    (tmp_path / "config.json").write_text(json.dumps({"study": {"budget": ["50%-FLOPs"]}}))
    now = {"budget": ["50%-FLOPs"], "latency_device": "cpu", "latency_runtime": "torch",
           "allocation": "per-group"}
    cli.check_resume(str(tmp_path), now)
    with pytest.raises(cli.UsageError, match="allocation: 'per-group' there, 'structured' now"):
        cli.check_resume(str(tmp_path), {**now, "allocation": "structured"})
    with pytest.raises(cli.UsageError, match="latency_device: 'cpu' there, 'cuda' now"):
        cli.check_resume(str(tmp_path), {**now, "latency_device": "cuda"})


def test_device_options_are_resolved_before_anything_runs(monkeypatch):
    from prunetune import cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    a = cli.parse_args(["--budget", "50%-FLOPs", "--workers", "2"])
    cli.validate(a)
    cuda = torch.cuda.is_available()
    assert a.device == ("cuda" if cuda else "cpu") and a.latency_device == a.device
    assert a.gpus_per_trial == (0.5 if cuda else 0.0)
    a = cli.parse_args(["--budget", "50%-FLOPs", "--device", "cpu"])
    cli.validate(a)
    assert (a.device, a.latency_device, a.gpus_per_trial) == ("cpu", "cpu", 0.0)
    assert "device" in cli.KNOWN_RESUME_FREE and "latency_device" in cli.study_config(a)


def test_final_task_trains_what_the_driver_trains_and_sends_back_a_remote_nodes_files(
        tiny, small, tmp_path):
    """The body of a final fine-tune as a Ray task (run here, without Ray): at the driver's
    thread count it gives the driver's model to the bit; in a run folder it cannot see (a node
    without the shared file system) it trains in a temporary folder, returns its log and
    metrics, and leaves nothing behind; in the driver's folder it checkpoints there."""
    import tempfile

    from prunetune.search._final import final_task, train_final

    torch.set_num_threads(2)
    torch.manual_seed(0)
    base = tiny.build_model()
    pol = tiny.uniform(0.5)
    record = {"trial": 3, "channels": tiny.channels(pol), "policy": pol}
    cfg = FinetuneConfig(epochs=1, batch_size=32)
    model, metrics = train_final(record, tiny, base, small, cfg, str(tmp_path / "here"),
                                 importance="l1", bn_batches=2, log=lambda s: None)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / ".run-id").write_text("the-driver")
    def temps() -> set[str]:
        return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("prunetune-final-")}

    before = temps()
    lines: list[str] = []
    away = final_task(record, "trial3", tiny.name, tiny.config(), base.state_dict(), small, cfg,
                      str(run), "another-driver", importance="l1", bn_batches=2, threads=2,
                      log=lines.append)
    assert away["metrics"]["test_acc"] == metrics["test_acc"]
    assert all(torch.equal(away["state"][k], v) for k, v in model.state_dict().items())
    assert set(away["files"]) == {"log.jsonl", "metrics.json"}
    assert json.loads(away["files"]["log.jsonl"])["epoch"] == 1
    assert "not shared with the driver" in lines[0] and not (run / "final" / "trial3").exists()
    assert temps() == before  # its temporary folder is gone
    shared = final_task(record, "trial3", tiny.name, tiny.config(), base.state_dict(), small,
                        cfg, str(run), "the-driver", importance="l1", bn_batches=2, threads=2,
                        log=lines.append)
    assert shared["files"] == {} and (run / "final" / "trial3" / "checkpoint.pt").is_file()
    assert shared["metrics"]["test_acc"] == metrics["test_acc"]


@pytest.mark.parametrize("final_on,device,gpus,want", [
    ("auto", "cpu", 0.0, None),                     # a laptop: this process
    ("auto", "cuda", 0.5, None),                    # a GPU here: this process, on it
    ("auto", "cpu", 1.0, {"num_cpus": 2, "num_gpus": 1.0}),  # CPU driver, GPU cluster
    ("ray", "cpu", 0.0, {"num_cpus": 2, "num_gpus": 0.0}),
    ("driver", "cpu", 1.0, None)])
def test_final_fine_tunes_go_where_the_gpus_are(final_on, device, gpus, want):
    from prunetune.pipeline import SearchJob, final_resources
    from prunetune.search import StudySettings

    job = SearchJob(budgets=[], out="x", device=device, cpus=4, final_on=final_on,
                    study=StudySettings(trials=4, workers=2, gpus_per_trial=gpus))
    assert final_resources(job) == want
    with pytest.raises(ValueError, match="`final_on` must be one of"):
        final_resources(SearchJob(budgets=[], out="x", final_on="gpu"))
