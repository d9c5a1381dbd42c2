"""Per-group sensitivity: how much the network suffers when one channel group alone is cut.

Each group is pruned alone to a few keep-ratios, BatchNorm statistics are re-estimated on
training batches (adaptive BN) and the pruned network is scored on validation images against
the dense one: the validation accuracy it lost and the KL divergence KL(dense || pruned) per
image (both 0 for the dense network). This is the sensitivity analysis of PaddleSlim's
``sensitivity`` and NVIDIA ModelOpt's fastnas.

The measurement is done once per base network, data and settings and cached on disk like the
latency table; the search turns it into allocations (``search._priors.sensitivity_allocation``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
import torch.nn as nn

from prunetune.spaces import SearchSpace, keep_channels

from ._data import FileSplit, ImageData, Split
from ._io import atomic_write_text
from ._progress import Eta
from ._prune import prune_to_channels
from ._train import _logits, adaptive_bn, evaluate_metrics

# The keep-ratios each group is probed at (a group at 1.0 loses nothing).
DEFAULT_PROBES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class SensitivityConfig:
    """How groups are probed. The checks of the command line's ``--sensitivity-probes`` live
    here (its messages name it).

    Attributes:
        probes: Keep-ratios each group is cut to, each in (0, 1).
        bn_batches: Training batches that re-estimate BatchNorm statistics after each cut.
        batch_size: Their batch size.
        val_images: At most this many validation images score each probe (0: all).
        seed: Seed of the BN batches (every probe sees the same ones).
    """

    probes: tuple[float, ...] = DEFAULT_PROBES
    bn_batches: int = 5
    batch_size: int = 64
    val_images: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.probes or any(not 0.0 < r < 1.0 for r in self.probes):
            raise ValueError(f"--sensitivity-probes must be keep-ratios in (0, 1), e.g. "
                             f"0.2,0.4,0.6,0.8, but got {','.join(map(str, self.probes))}.")
        if len(set(self.probes)) != len(self.probes):
            raise ValueError(f"--sensitivity-probes {','.join(map(str, self.probes))} repeats "
                             f"a ratio; give each once.")
        if self.bn_batches < 1 or self.batch_size < 1 or self.val_images < 0:
            raise ValueError(f"`bn_batches` and `batch_size` must be >= 1 and `val_images` "
                             f">= 0, but got {self.bn_batches}, {self.batch_size}, "
                             f"{self.val_images}.")


@dataclass
class Sensitivity:
    """The measured drop of every group at every probe ratio.

    Attributes:
        probes: The keep-ratios probed, ascending.
        drops: Per group, the KL drop at each probe ratio (same order as ``probes``).
        accuracy_drops: Per group, the validation accuracy lost at each probe ratio.
        key: What was measured (space, weights, data, settings): a cached result is reused
            only for the same key.
        seconds: Time the measurement took.
    """

    probes: tuple[float, ...]
    drops: dict[str, list[float]]
    accuracy_drops: dict[str, list[float]] = field(default_factory=dict)
    key: dict = field(default_factory=dict)
    seconds: float = 0.0

    def curve(self, group: str, measure: str = "kl") -> list[tuple[float, float]]:
        """``(ratio, drop)`` points of ``group`` from its smallest probe to 1.0 (drop 0) in
        ``measure`` (``kl`` or ``accuracy``), the drop made non-increasing in the ratio
        (keeping more never hurts more): a probe that measured less than a larger ratio's is
        raised to it, a negative drop to 0."""
        drops = self.drops if measure == "kl" else self.accuracy_drops
        pts = sorted(zip(self.probes, drops[group])) + [(1.0, 0.0)]
        out, worst = [], 0.0
        for r, d in reversed(pts):
            worst = max(worst, d if math.isfinite(d) else math.inf)
            out.append((r, worst))
        return out[::-1]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "probes": list(self.probes)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        d = json.loads(text)
        return cls(tuple(d["probes"]), {k: list(v) for k, v in d["drops"].items()},
                   {k: list(v) for k, v in d.get("accuracy_drops", {}).items()},
                   d.get("key", {}), d.get("seconds", 0.0))


def sensitivity_key(space: SearchSpace, weights: str, data: str,
                    config: SensitivityConfig) -> dict:
    """What identifies a measurement: the space, the base's weights and the data (their
    fingerprints) and the settings."""
    return {"space": space.name, "config": space.config(), "weights": weights, "data": data,
            "settings": {**asdict(config), "probes": sorted(config.probes)}}


def measure_sensitivity(base: nn.Module, space: SearchSpace, data: ImageData,
                        config: SensitivityConfig = SensitivityConfig(),
                        log: Callable[[str], None] = print) -> Sensitivity:
    """Prune each group of ``space`` alone to each probe ratio and measure what it loses on
    the validation split, in accuracy and in KL to ``base`` (see the module docstring); a
    progress line with the ETA every five groups."""
    t0 = time.perf_counter()
    probes = tuple(sorted(config.probes))
    val = _sample(data.val, config.val_images, config.seed)
    t_logits = _logits(base, data, val)
    full = space.full_channels()
    dense_acc = float((t_logits.argmax(1) == val.y).double().mean())
    drops: dict[str, list[float]] = {}
    acc_drops: dict[str, list[float]] = {}
    eta, told = Eta(len(space.groups)), 0
    for i, group in enumerate(space.groups):
        row: list[float] = []
        acc_row: list[float] = []
        for r in probes:
            kept = {**full, group.name: keep_channels(group.channels, r, space.round_to)}
            if kept[group.name] == full[group.name]:
                row.append(0.0)
                acc_row.append(0.0)
                continue
            model = prune_to_channels(base, space, kept, input_size=data.image_size)
            adaptive_bn(model, data, config.bn_batches, config.batch_size,
                        torch.Generator().manual_seed(config.seed))
            m = evaluate_metrics(model, data, val, t_logits)
            row.append(m["kl"] if math.isfinite(m["kl"]) else math.inf)
            acc_row.append(dense_acc - m["accuracy"])
        drops[group.name] = row
        acc_drops[group.name] = acc_row
        if (i + 1) % 5 == 0 or i + 1 == len(space.groups):
            log(f"  sensitivity: {i + 1}/{len(space.groups)} groups | {eta.step(i + 1 - told)}")
            told = i + 1
    return Sensitivity(probes, drops, acc_drops, seconds=time.perf_counter() - t0)


def _sample(split: Split | FileSplit, n: int, seed: int) -> Split | FileSplit:
    """``n`` images of ``split`` drawn at random (all of them when ``n`` is 0 or larger)."""
    if not n or len(split) <= n:
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort()
    keep = idx.values
    if isinstance(split, Split):
        return Split(split.x[keep], split.y[keep])
    return replace(split, paths=[split.paths[i] for i in keep.tolist()], y=split.y[keep])


def get_sensitivity(base: nn.Module, space: SearchSpace, data: ImageData, *, folder: str,
                    config: SensitivityConfig = SensitivityConfig(),
                    log: Callable[[str], None] = print) -> Sensitivity:
    """The cached measurement for this space, base weights, data and settings, or a new one
    (cached in ``folder``)."""
    from ._base_model import data_fingerprint
    from ._finetune import weights_fingerprint

    key = sensitivity_key(space, weights_fingerprint(base), data_fingerprint(data), config)
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = os.path.join(folder, f"sensitivity-{space.name}-{h}.json")
    if os.path.isfile(path):
        with open(path) as f:
            found = Sensitivity.from_json(f.read())
        if json.dumps(found.key, sort_keys=True, default=str) == \
                json.dumps(key, sort_keys=True, default=str):
            log(f"sensitivity: cached {path}")
            return found
    n = len(space.groups) * len(config.probes)
    log(f"sensitivity: each of {len(space.groups)} groups cut alone to "
        f"{', '.join(f'{r:g}' for r in sorted(config.probes))} ({n} adaptive-BN scorings)")
    sens = measure_sensitivity(base, space, data, config, log)
    sens.key = json.loads(json.dumps(key, default=str))
    atomic_write_text(path, sens.to_json())
    log(f"sensitivity: {sens.seconds:.0f} s, saved {path}")
    return sens
