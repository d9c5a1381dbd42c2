"""Scoring a candidate: prune → adaptive BN → a quick fine-tune → validation accuracy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn

from prunetune._registry import Registry
from prunetune.spaces import SearchSpace

from ._data import ImageData
from ._device import check_precision
from ._prune import importance_gradients, prune_to_channels
from ._train import (Diverged, adaptive_bn, check_at_least, check_training, evaluate_metrics,
                     train_steps, val_logits)

# What a score can rank by (each turned into "higher is better"), with what it is.
RANK_BY: Registry[str] = Registry("rank-by metric", {
    "accuracy": "validation top-1 accuracy",
    "loss": "validation cross-entropy, negated",
    "kl": "KL divergence to the dense base's validation predictions, negated",
})


@dataclass(frozen=True)
class ScoreConfig:
    """How a candidate is scored. Defaults suit 32×32 inputs on a few CPU cores. The checks of
    the command line's scoring options live here (its messages name those options).

    Attributes:
        bn_batches: Training batches used to re-estimate BatchNorm statistics (0 = skip).
        steps: Quick fine-tune steps after adaptive BN (0 = adaptive BN only).
        report_every: Evaluate on the validation split every this many steps (``history``).
        distill: Train the quick steps against the dense base's soft targets (KD) as well as
            the labels, as the final fine-tune does.
        rank_by: The number the score stands for: validation ``accuracy`` (higher is
            better), or ``loss`` (cross-entropy) / ``kl`` (to the dense base's predictions),
            negated so that higher is better for every choice.
        precision: ``auto`` (bf16/fp16 autocast on a GPU, fp32 on the CPU; see
            ``resolve_precision``), ``fp32``, ``bf16`` or ``fp16``, for the quick steps.
    """

    bn_batches: int = 20
    steps: int = 40
    batch_size: int = 64
    lr: float = 0.01
    report_every: int = 20
    importance: str = "l1"
    seed: int = 0
    distill: bool = False
    kd_weight: float = 0.5
    kd_temperature: float = 4.0
    rank_by: str = "accuracy"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.rank_by not in RANK_BY:
            raise ValueError(f"`rank_by` must be one of {list(RANK_BY)}, but got "
                             f"{self.rank_by!r}.")
        check_at_least(0, bn_batches=self.bn_batches, score_steps=self.steps)
        check_training("--score-lr", self.lr, self.batch_size)
        check_precision(self.precision)
        if self.report_every < 1:
            raise ValueError(f"`report_every` must be >= 1, but got {self.report_every}.")


@dataclass
class ScoreResult:
    """``accuracy``: validation top-1 at the end; ``score``: the ``rank_by`` number (higher is
    better); ``metrics``: accuracy, loss and (with a teacher) kl at the end; ``history``:
    (stage, step, score) at each report."""

    accuracy: float
    score: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[tuple[str, int, float]] = field(default_factory=list)
    seconds: float = 0.0
    failure: str | None = None


def score_candidate(base: nn.Module, space: SearchSpace, data: ImageData,
                    channels: Mapping[str, int], config: ScoreConfig = ScoreConfig()
                    ) -> tuple[ScoreResult, nn.Module | None]:
    """Prune ``base`` to ``channels`` and score it on the validation split.

    Every candidate scored with the same ``config`` sees the same BN batches, training batches
    and validation images (common random numbers), so differences between candidates are
    not differences of luck. With ``config.distill`` or ``rank_by="kl"`` the unpruned
    ``base`` is the teacher.

    Returns:
        The score (``failure`` set and accuracy 0 if the candidate diverged) and the pruned,
        briefly fine-tuned model (``None`` on failure).
    """
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = prune_to_channels(base, space, channels, config.importance,
                              input_size=data.image_size,
                              grads=importance_gradients(config.importance, base, data,
                                                         config.seed))
    model = model.to(memory_format=torch.channels_last)
    res = ScoreResult(accuracy=0.0)
    teacher = base if (config.distill or config.rank_by == "kl") else None
    t_logits = val_logits(base, data) if config.rank_by == "kl" else None

    def record(stage: str, step: int) -> None:
        res.metrics = evaluate_metrics(model, data, data.val, t_logits)
        res.accuracy = res.metrics["accuracy"]
        m = res.metrics[config.rank_by]
        res.score = m if config.rank_by == "accuracy" else -m
        res.history.append((stage, step, res.score))

    adaptive_bn(model, data, config.bn_batches, config.batch_size, gen)
    record("bn", 0)
    done, opt = 0, None
    try:
        while done < config.steps:
            chunk = min(config.report_every, config.steps - done)
            opt = train_steps(model, data, chunk, lr=config.lr, batch_size=config.batch_size,
                              gen=gen, start_step=done, total_steps=config.steps, optimizer=opt,
                              teacher=teacher if config.distill else None,
                              kd_weight=config.kd_weight if config.distill else 0.0,
                              kd_temperature=config.kd_temperature,
                              precision=config.precision)
            done += chunk
            record("step", done)
    except Diverged as e:
        res.accuracy, res.score, res.failure = 0.0, float("-inf"), f"diverged: {e}"
        res.seconds = time.perf_counter() - t0
        return res, None
    res.seconds = time.perf_counter() - t0
    return res, model
