"""The final fine-tune: cosine LR, label smoothing, optional distillation, resumable per epoch."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ._data import ImageData
from ._device import check_precision, resolve_precision
from ._io import atomic_write_bytes, atomic_write_text
from ._train import check_at_least, check_training, correct, evaluate, train_steps

# The largest distillation temperature taken (the range --kd-temperature has always had).
MAX_KD_TEMPERATURE = 100.0


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 5
    # A low rate after a short warm-up: a freshly pruned network keeps what it has. On CIFAR-10
    # (uniform width at 50% FLOPs, 4,500 images, 3 distilled epochs, test accuracy of four
    # seeds): 0.005 gave 68.6/69.6/68.7/68.0%, 0.01 70.2/70.3/68.8/68.2%, 0.02
    # 69.2/72.1/63.4/69.4%, and 0.02 without warm-up 47.3/70.2/70.8/59.4%.
    lr: float = 0.005
    warmup_epochs: float = 0.5
    batch_size: int = 64
    label_smoothing: float = 0.1
    distill: bool = True
    kd_temperature: float = 4.0
    kd_weight: float = 0.5
    seed: int = 0
    precision: str = "auto"  # auto: bf16/fp16 autocast on a GPU, fp32 on the CPU

    def __post_init__(self) -> None:
        """The final fine-tune's options' checks (the messages name the command line's)."""
        check_at_least(0, final_epochs=self.epochs)
        check_training("--final-lr", self.lr, self.batch_size)
        if self.warmup_epochs < 0:
            raise ValueError(f"`warmup_epochs` must be >= 0, but got {self.warmup_epochs}.")
        if not 0.0 < self.kd_temperature <= MAX_KD_TEMPERATURE:
            raise ValueError(f"--kd-temperature must be in (0, {MAX_KD_TEMPERATURE:g}], but got "
                             f"{self.kd_temperature}.")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"--kd-weight must be in [0, 1], but got {self.kd_weight}.")
        check_precision(self.precision)


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of ``model``'s parameters and buffers (names, shapes, dtypes and values):
    what tells one base's weights from another's when a resumed stage checks its inputs."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """What differs between two records of a stage's inputs, one ``key: A there, B now`` each
    (long values shortened)."""
    def short(v: Any) -> str:
        r = repr(v)
        return r if len(r) <= 40 else r[:37] + "..."

    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):  # the recipe's own keys go unprefixed
            out += _changes(a, b, "" if k == "config" else f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {short(a)} there, {short(b)} now")
    return out


def _record(config: FinetuneConfig, device: torch.device, data: ImageData,
            teacher: nn.Module | None, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a fine-tune's result depends on besides its starting weights, as JSON (what a
    checkpoint stores and a resume compares). The device itself is not in it (a run may go on
    elsewhere), but the precision it trains in is."""
    from ._base_model import data_fingerprint

    kd_teacher = teacher if config.distill else None
    rec = {"config": asdict(config), "trained_in": resolve_precision(config.precision, str(device)),
           "data": data_fingerprint(data),
           "teacher": weights_fingerprint(kd_teacher) if kd_teacher is not None else None,
           **(inputs or {})}
    return json.loads(json.dumps(rec, sort_keys=True))  # tuples become lists, as stored


def _resumable(out_dir: str, record: Mapping[str, Any], log: Callable[[str], None]) -> bool:
    """Whether ``out_dir`` holds a checkpoint of ``record``. One of another record (another
    recipe, network, base, teacher or data; or one that records none) is removed with its log,
    and one line says what changed: a result is continued only by the run it belongs to."""
    path = os.path.join(out_dir, "checkpoint.pt")
    if not os.path.isfile(path):
        return False
    ck = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(ck["inputs"]) if "inputs" in ck else None
    if saved == record:
        return True
    what = (_changes(saved, record) if saved is not None
            else ["the checkpoint records no settings (made by an older version)"])
    log(f"  fine-tune: {'; '.join(what[:3])}{'; ...' if len(what) > 3 else ''} "
        f"(checkpoint in {out_dir}): starting this fine-tune over")
    for name in ("checkpoint.pt", "log.jsonl", "metrics.json"):
        try:
            os.remove(os.path.join(out_dir, name))
        except FileNotFoundError:
            pass
    return False


def _restore(path: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
             dev: torch.device) -> int:
    """Load the checkpoint at ``path`` into ``model``, ``opt``, ``gen`` and torch's global RNG;
    returns the epochs it has done."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    gen.set_state(ck["generator"])
    # Dropout draws from the global RNG: restored, not re-seeded, so a resumed run drops
    # the units the uninterrupted one would have.
    torch.set_rng_state(ck["torch_rng"])
    if dev.type == "cuda" and "cuda_rng" in ck:
        torch.cuda.set_rng_state(ck["cuda_rng"], dev)
    return int(ck["epoch"])


def _save(path: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
          dev: torch.device, epoch: int, record: Mapping[str, Any]) -> None:
    """Write the checkpoint after ``epoch`` epochs to ``path`` (atomically), with what it
    depends on (``record``)."""
    buf = io.BytesIO()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "epoch": epoch, "inputs": json.dumps(record, sort_keys=True)}
    if dev.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(dev)
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def finetune(model: nn.Module, data: ImageData, config: FinetuneConfig, out_dir: str,
             teacher: nn.Module | None = None, log: Callable[[str], None] = print, *,
             inputs: Mapping[str, Any] | None = None,
             prepare: Callable[[nn.Module], None] | None = None) -> dict:
    """Fine-tune ``model`` in place for ``config.epochs``; checkpoint every epoch in ``out_dir``.

    Training runs on the device ``model`` is on (``teacher`` must be on the same one).

    Each checkpoint records what the result depends on: ``config``, fingerprints of the data
    and of the teacher, and ``inputs`` (JSON; the caller's, e.g. the network's channels and a
    fingerprint of the weights it was pruned from). A checkpoint in ``out_dir`` of the same
    record, from an interrupted run, is resumed from its epoch, with the optimizer, the batch
    order and torch's global RNG (dropout) as they were; one of another record is deleted and
    the fine-tune started over, with one line saying what changed. ``prepare(model)`` runs on
    a fresh start only (e.g. adaptive BN; a checkpoint holds its effect). Writes
    ``checkpoint.pt``, ``log.jsonl`` (one line per epoch) and ``metrics.json``, and returns
    the metrics (test accuracy scored once, at the end).
    """
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    dev = next(model.parameters()).device
    record = _record(config, dev, data, teacher, inputs)
    resume = _resumable(out_dir, record, log)
    if not resume and prepare is not None:
        prepare(model)
    per_epoch = max(1, len(data.train) // config.batch_size)
    total = config.epochs * per_epoch
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=4e-5,
                          nesterov=True)
    start = 0
    if resume:
        start = _restore(ckpt_path, model, opt, gen, dev)
        log(f"  fine-tune: resuming after epoch {start}/{config.epochs}")
    use_kd = config.distill and teacher is not None
    t0 = time.perf_counter()
    for ep in range(start, config.epochs):
        te = time.perf_counter()
        train_steps(model, data, per_epoch, lr=config.lr, batch_size=config.batch_size, gen=gen,
                    label_smoothing=config.label_smoothing, teacher=teacher if use_kd else None,
                    kd_temperature=config.kd_temperature,
                    kd_weight=config.kd_weight if use_kd else 0.0,
                    start_step=ep * per_epoch, total_steps=total, optimizer=opt,
                    warmup_steps=round(config.warmup_epochs * per_epoch),
                    precision=config.precision)
        val = evaluate(model, data, data.val)
        _save(ckpt_path, model, opt, gen, dev, ep + 1, record)
        with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": ep + 1, "val_acc": val,
                                "seconds": time.perf_counter() - te}) + "\n")
        log(f"  fine-tune epoch {ep + 1}/{config.epochs}: val acc {val:.2%} "
            f"({time.perf_counter() - te:.1f} s)")
    return _final_metrics(model, data, config, out_dir, t0, use_kd, record)


def _final_metrics(model: nn.Module, data: ImageData, config: FinetuneConfig, out_dir: str,
            t0: float, use_kd: bool, record: Mapping[str, Any]) -> dict:
    """Score the fine-tuned ``model`` (test accuracy, once) and write ``metrics.json``."""
    right = correct(model, data, data.test)
    metrics = {"val_acc": evaluate(model, data, data.val),
               "test_acc": int(right.sum()) / max(1, len(data.test)),
               # per test image, in order ("1": right): the paired test against uniform width
               "test_correct": "".join("1" if r else "0" for r in right.tolist()),
               "epochs": config.epochs, "seconds": time.perf_counter() - t0,
               "config": asdict(config), "distilled": use_kd, "inputs": record}
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=1))
    return metrics
