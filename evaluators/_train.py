"""Training primitives shared by the scorer, the final fine-tune and the base-model trainer."""

from __future__ import annotations

import math
import weakref
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._data import FileSplit, ImageData, Split
from ._device import autocast, grad_scaler, resolve_precision


_SCALERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, torch.amp.GradScaler] = \
    weakref.WeakKeyDictionary()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# The largest learning rate a stage takes (the range --score-lr and --final-lr have always had).
MAX_LR = 10.0


def check_training(option_lr: str, lr: float, batch_size: int) -> None:
    """The rules every stage's training settings share: ``lr`` in (0, :data:`MAX_LR`] (named
    ``option_lr``, e.g. ``--score-lr``) and a batch of at least two images; a ValueError naming
    the option, the value and the rule."""
    if not 0.0 < lr <= MAX_LR:
        raise ValueError(f"{option_lr} must be in (0, {MAX_LR:g}], but got {lr}.")
    if batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2 (BatchNorm trains on at least two "
                         f"values per channel), but got {batch_size}.")


def check_at_least(least: int, **values: int) -> None:
    """Each of ``values`` (option name with ``_`` for ``-``, e.g. ``score_steps``) at least
    ``least``, or a ValueError naming the option."""
    for k, v in values.items():
        if v < least:
            raise ValueError(f"--{k.replace('_', '-')} must be >= {least}, but got {v}.")


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the message says at which step."""


@torch.inference_mode()
def correct(model: nn.Module, data: ImageData, split: Split | FileSplit,
            batch_size: int = 256) -> torch.Tensor:
    """Per image of ``split``, in order: whether ``model``'s top-1 class is the label (bool)."""
    was = model.training
    model.eval()
    dev = _device(model)
    out = [model(x.to(dev)).argmax(1).cpu() == y for x, y in data.batches(split, batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def evaluate(model: nn.Module, data: ImageData, split: Split | FileSplit,
             batch_size: int = 256) -> float:
    """Top-1 accuracy (0–1) of ``model`` on ``split``."""
    return int(correct(model, data, split, batch_size).sum()) / max(1, len(split))


@torch.inference_mode()
def _logits(model: nn.Module, data: ImageData, split: Split | FileSplit,
            batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on ``split``, on the CPU."""
    was = model.training
    model.eval()
    dev = _device(model)
    out = torch.cat([model(x.to(dev)).float().cpu() for x, _ in data.batches(split, batch_size)])
    model.train(was)
    return out


def val_logits(model: nn.Module, data: ImageData, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on the validation split, on the CPU."""
    return _logits(model, data, data.val, batch_size)


@torch.inference_mode()
def evaluate_metrics(model: nn.Module, data: ImageData, split: Split | FileSplit,
                     teacher_logits: torch.Tensor | None = None, batch_size: int = 256
                     ) -> dict[str, float]:
    """Top-1 ``accuracy``, mean cross-entropy ``loss`` and, given the teacher's logits on the
    same split, ``kl`` = KL(teacher || model) per image."""
    logits = _logits(model, data, split, batch_size)
    y = split.y
    out = {"accuracy": float((logits.argmax(1) == y).double().mean()),
           "loss": float(F.cross_entropy(logits, y))}
    if teacher_logits is not None:
        out["kl"] = float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher_logits, 1),
                                   reduction="batchmean", log_target=True))
    return out


@torch.no_grad()
def adaptive_bn(model: nn.Module, data: ImageData, num_batches: int, batch_size: int,
                gen: torch.Generator) -> None:
    """Re-estimate BatchNorm statistics on ``num_batches`` training batches (EagleEye).

    Running statistics are reset and replaced by the plain average over the batches; weights
    are untouched.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_batches <= 0:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration batches
    was = model.training
    model.train()
    # Un-augmented training images: the statistics should match what evaluation feeds in.
    for i, (x, _) in enumerate(_cycle(data, data.train, batch_size, gen, augment=False)):
        if i >= num_batches:
            break
        model(x.to(_device(model)))
    for bn, m in zip(bns, saved):
        bn.momentum = m
    model.train(was)


def _cycle(data: ImageData, split: Split | FileSplit, batch_size: int, gen: torch.Generator,
           augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from data.batches(split, batch_size, train=True, augment=augment, gen=gen,
                                drop_last=True)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float
                      ) -> torch.Tensor:
    """Hinton et al.'s soft-target loss, scaled by T² so gradients keep their size."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def train_steps(model: nn.Module, data: ImageData, steps: int, *, lr: float,
                batch_size: int, gen: torch.Generator, weight_decay: float = 4e-5,
                momentum: float = 0.9, label_smoothing: float = 0.0,
                teacher: nn.Module | None = None, kd_temperature: float = 4.0,
                kd_weight: float = 0.0, schedule: str = "cosine", start_step: int = 0,
                total_steps: int | None = None, optimizer: torch.optim.Optimizer | None = None,
                on_step: Callable[[int, float], None] | None = None,
                warmup_steps: int = 0, precision: str = "auto") -> torch.optim.Optimizer:
    """Run SGD (Nesterov) for ``steps`` steps, from ``start_step`` of a ``total_steps`` schedule.

    The learning rate rises linearly over the schedule's first ``warmup_steps`` steps (a freshly
    pruned network hit by the full rate at step 0 can lose what it kept), then follows
    ``schedule``. The model trains on the device its parameters are on; ``precision``
    ``bf16`` / ``fp16`` runs the forward passes under autocast (fp16 with gradient scaling),
    ``auto`` picks for the device (``resolve_precision``: fp32 on the CPU).

    Raises:
        Diverged: the loss is NaN or infinite.
    """
    total = total_steps or steps
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                    weight_decay=weight_decay, nesterov=True)
    model.train()
    dev = _device(model)
    if teacher is not None:
        teacher.eval()
    it = _cycle(data, data.train, batch_size, gen)
    precision = resolve_precision(precision, str(dev))
    # One scaler per optimizer, kept across calls (chunks, epochs), so fp16's loss scale is
    # learnt once rather than restarted at 2^16 with skipped steps every call.
    scaler = _SCALERS.get(optimizer)
    if scaler is None:
        scaler = _SCALERS[optimizer] = grad_scaler(dev, precision)
    for step in range(start_step, start_step + steps):
        frac = step / max(1, total)
        cur = lr * 0.5 * (1 + math.cos(math.pi * frac)) if schedule == "cosine" else lr
        if step < warmup_steps:
            cur *= (step + 1) / (warmup_steps + 1)
        for g in optimizer.param_groups:
            g["lr"] = cur
        x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with autocast(dev, precision):
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            if teacher is not None and kd_weight > 0:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = (1 - kd_weight) * loss + kd_weight * distillation_loss(out, t_out,
                                                                              kd_temperature)
        if not torch.isfinite(loss):
            raise Diverged(f"loss became {loss.item()} at step {step} (lr {cur:.4g})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return optimizer


def taylor_gradients(model: nn.Module, data: ImageData, batches: int = 8, batch_size: int = 64,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradients of the training cross-entropy, summed over ``batches`` batches (the same ones
    for a seed), by parameter name; what the ``taylor`` importance ranks channels with. The
    model is left as it was (a copy is differentiated, in eval mode: BN statistics untouched)."""
    import copy

    m = copy.deepcopy(model).eval()
    dev = _device(m)
    m.zero_grad(set_to_none=True)
    it = _cycle(data, data.train, batch_size, torch.Generator().manual_seed(seed))
    for _ in range(batches):
        x, y = next(it)
        F.cross_entropy(m(x.to(dev)), y.to(dev)).backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}

