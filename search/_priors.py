"""Allocations worth trying first: cost-aware widths (cheap channels kept, costly ones cut).

A uniform width multiplier cuts every group by the same fraction, although a channel of an
early, high-resolution layer costs many times the FLOPs of a channel of a late one. The
*cost-aware* family keeps each group in inverse proportion to what one of its channels costs:

    raw_g = (c_g / geomean(c)) ** (-alpha)

where ``c_g`` is the marginal cost (FLOPs, MACs, params or predicted latency — the budget's
metric) of one channel of group ``g`` in the dense network. ``alpha = 0`` is uniform width;
larger ``alpha`` shifts more of the budget to cheap (usually late) channels. The budget
repair then scales the raw ratios together onto the budget, so every member lands there.
"""

from __future__ import annotations

import math
from typing import Mapping

from evaluators import LatencyTable, channels_cost
from spaces import Policy, SearchSpace

# The members one would try (``--priors cost:0.25,cost:0.5,cost:1``); not enqueued by
# default, because on CIFAR-10 they scored below uniform width
# (bench/results/search_vs_uniform.json).
DEFAULT_ALPHAS: tuple[float, ...] = (0.25, 0.5, 1.0)

# Start-point families by name: ``"cost:A"`` is cost_aware(alpha=A), ``"ramp:B"`` is
# depth_ramp(beta=B).
FAMILIES = {"cost": "cost-aware a", "ramp": "depth-ramp b"}


def parse_priors(text: str) -> tuple[str, ...]:
    """``"ramp:0.5,cost:1"`` (a bare number means ``cost:``) as normalised ``family:value``
    strings; ``"none"`` or ``""`` is no priors.

    Raises:
        ValueError: naming the bad item and the accepted form.
    """
    out: list[str] = []
    for item in (i.strip() for i in text.split(",")):
        if not item or item.lower() == "none":
            continue
        family, _, value = item.rpartition(":")
        family = family or "cost"
        try:
            v = float(value)
        except ValueError:
            v = -1.0
        if family not in FAMILIES or not math.isfinite(v) or v < 0:
            raise ValueError(f"prior {item!r} is not FAMILY:VALUE with FAMILY one of "
                             f"{sorted(FAMILIES)} and VALUE >= 0, e.g. ramp:0.5,cost:1, "
                             f"or none.")
        out.append(f"{family}:{v:g}")
    return tuple(out)


def marginal_costs(space: SearchSpace, metric: str, size: int,
                   table: LatencyTable | None = None) -> dict[str, float]:
    """What removing one channel of each group saves in ``metric``, from the dense network.

    Measured over ``round_to`` channels (the smallest step a group can take) and divided by
    it, so the numbers are per channel. Groups whose removal saves nothing get the smallest
    positive saving of the others (they are then kept widest).
    """
    full = space.full_channels()

    def cost(ch: Mapping[str, int]) -> float:
        if metric == "latency":
            if table is None:
                raise ValueError("A latency metric needs a latency table.")
            return table.predict_channels(space.layers(ch, size))
        return float(channels_cost(space, ch, size).as_dict()[metric])

    dense = cost(full)
    out: dict[str, float] = {}
    for g in space.groups:
        step = min(space.round_to, g.channels - 1)
        if step < 1:
            out[g.name] = 0.0
            continue
        out[g.name] = max(0.0, (dense - cost({**full, g.name: g.channels - step})) / step)
    positive = [v for v in out.values() if v > 0]
    floor = min(positive) if positive else 1.0
    return {k: (v if v > 0 else floor) for k, v in out.items()}


def cost_aware(space: SearchSpace, costs: Mapping[str, float], alpha: float) -> Policy:
    """The raw allocation ``(c_g / geomean c) ** -alpha``, scaled so its largest ratio is
    ``space.high`` and clipped to the space's bounds (repair it onto a budget to use it)."""
    if alpha < 0:
        raise ValueError(f"`alpha` must be >= 0, but got {alpha}.")
    logs = {k: math.log(v) for k, v in costs.items()}
    mean = sum(logs.values()) / len(logs)
    raw = {k: math.exp(-alpha * (v - mean)) for k, v in logs.items()}
    top = max(raw.values())
    return space.validate({k: min(space.high, max(space.low, space.high * v / top))
                           for k, v in raw.items()})


def depth_ramp(space: SearchSpace, beta: float) -> Policy:
    """The raw allocation ``((i + 1) / n) ** beta`` over the groups in network order: later
    groups keep more (``beta = 0`` is uniform width). Repair it onto a budget to use it."""
    if beta < 0:
        raise ValueError(f"`beta` must be >= 0, but got {beta}.")
    n = len(space.groups)
    return space.validate({g.name: min(space.high, max(space.low, ((i + 1) / n) ** beta))
                           for i, g in enumerate(space.groups)})
