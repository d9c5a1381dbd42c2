"""Allocations worth trying first: cost-aware widths (cheap channels kept, costly ones cut).

A uniform width multiplier cuts every group by the same fraction, although a channel of an
early, high-resolution layer costs many times the FLOPs of a channel of a late one. The
*cost-aware* family keeps each group in inverse proportion to what one of its channels costs:

    raw_g = (c_g / geomean(c)) ** (-alpha)

where ``c_g`` is the marginal cost (FLOPs, MACs, params or predicted latency — the budget's
metric) of one channel of group ``g`` in the dense network. ``alpha = 0`` is uniform width;
larger ``alpha`` shifts more of the budget to cheap (usually late) channels, negative
``alpha`` to costly ones (in MobileNetV2, the narrow residual widths). The budget repair then
scales the raw ratios together onto the budget, so every member lands there.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

from prunetune._registry import Registry
from prunetune.evaluators import LatencyTable, Sensitivity, channels_cost
from prunetune.spaces import Policy, SearchSpace

from ._repair import candidate_values, fits

# Exponents of the cost-aware family worth trying on either side of uniform width.
DEFAULT_ALPHAS: tuple[float, ...] = (0.25, 0.5, 1.0)

# The start points enqueued by default: the sensitivity allocation (see
# sensitivity_allocation) and cost-aware with *negative* alpha (keep the costly
# channels — MobileNetV2's narrow residual widths — and cut the cheap hidden ones). On
# CIFAR-10 at 30% FLOPs, after the identical 3-epoch fine-tune (2 seeds), alpha -0.5 beat
# uniform width by +3.7 pp and -1 by +2.35 pp, while +0.5 lost 21 pp and a depth ramp 26 pp
# (bench/results/families_at_budget.json).
DEFAULT_PRIORS: tuple[str, ...] = ("sens:1", "cost:-0.25", "cost:-0.5", "cost:-1")

# Start-point families by name: ``"cost:A"`` is cost_aware(alpha=A), ``"ramp:B"`` is
# depth_ramp(beta=B), ``"sens:T"`` the sensitivity allocation (T = 1; below 1, that far from
# uniform width towards it, in log-ratios: see search._structured).
FAMILIES: Registry[str] = Registry("start-point family",
                                   {"cost": "cost-aware a", "ramp": "depth-ramp b",
                                    "sens": "sensitivity t"})


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
            v = math.nan
        if family not in FAMILIES or not math.isfinite(v):
            raise ValueError(f"prior {item!r} is not FAMILY:VALUE with FAMILY one of "
                             f"{sorted(FAMILIES)} and VALUE a number, e.g. ramp:0.5,cost:-1, "
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
    if not math.isfinite(alpha):
        raise ValueError(f"`alpha` must be a finite number, but got {alpha}.")
    logs = {k: math.log(v) for k, v in costs.items()}
    mean = sum(logs.values()) / len(logs)
    raw = {k: math.exp(-alpha * (v - mean)) for k, v in logs.items()}
    top = max(raw.values())
    return space.validate({k: min(space.high, max(space.low, space.high * v / top))
                           for k, v in raw.items()})


def depth_ramp(space: SearchSpace, beta: float) -> Policy:
    """The raw allocation ``((i + 1) / n) ** beta`` over the groups in network order, scaled so
    its largest ratio is ``space.high``: with ``beta > 0`` later groups keep more, with
    ``beta < 0`` earlier ones (``beta = 0`` is uniform width). Repair it onto a budget to use
    it."""
    if not math.isfinite(beta):
        raise ValueError(f"`beta` must be a finite number, but got {beta}.")
    n = len(space.groups)
    raw = [((i + 1) / n) ** beta for i in range(n)]
    top = max(raw)
    return space.validate({g.name: min(space.high, max(space.low, space.high * r / top))
                           for g, r in zip(space.groups, raw)})


def _smallest_ratio(curve: list[tuple[float, float]], tau: float) -> float:
    """The smallest ratio whose drop is at most ``tau`` on a non-increasing piecewise-linear
    ``curve`` of ``(ratio, drop)`` points ending at ``(1.0, 0.0)``."""
    if curve[0][1] <= tau:
        return curve[0][0]
    for (r0, d0), (r1, d1) in zip(curve, curve[1:]):
        if d0 > tau >= d1:
            return r1 if not math.isfinite(d0) else r0 + (r1 - r0) * (d0 - tau) / (d0 - d1)
    return 1.0


def sensitivity_allocation(space: SearchSpace, sens: Sensitivity, limits: Mapping[str, float],
                           size: int, table: LatencyTable | None = None, *,
                           rule: str = "threshold", measure: str = "accuracy") -> Policy:
    """An allocation from the measured per-group drops that fits ``limits``.

    - ``rule="threshold"`` (PaddleSlim, ModelOpt fastnas; the ``sens:`` start point): each
      group takes the smallest ratio whose drop stays under one threshold, the threshold the
      smallest that fits.
    - ``rule="greedy"`` (NetAdapt's FLOPs-per-loss cuts, without its fine-tunes, solved at
      once): each group takes the ratio that minimises ``drop_g(r) - lambda * saving_g(r)``,
      the saving being what cutting the group alone to ``r`` saves of the budget's metric;
      ``lambda`` is the smallest that fits (bisected).

    Drops are ``measure``'s (``accuracy`` lost or ``kl``), made non-increasing in the ratio and
    interpolated between the probes; no ratio goes below the smallest probe. If even the
    smallest is over budget, the allocation at the strongest cut is returned (the repair
    scales it onto the budget).

    Raises:
        ValueError: an unknown ``rule`` or ``measure``, or ``sens`` lacks a group of ``space``
            (it measured another network).
    """
    if rule not in ("greedy", "threshold") or measure not in ("accuracy", "kl"):
        raise ValueError(f"`rule` must be greedy or threshold and `measure` accuracy or kl, "
                         f"but got {rule!r}, {measure!r}.")
    drops = sens.accuracy_drops if measure == "accuracy" else sens.drops
    missing = [g for g in space.group_names if g not in drops]
    if missing:
        raise ValueError(f"the sensitivity measurement has no {measure} drops of group(s) "
                         f"{missing}: it measured another network or an older version; "
                         f"measure this one again.")
    curves = {g: sens.curve(g, measure) for g in space.group_names}
    floor = max(space.low, min(sens.probes))
    alloc = (_by_threshold(space, curves, floor) if rule == "threshold"
             else _by_saving(space, curves, floor, next(iter(limits)), size, table))
    if fits(space, alloc(0.0), limits, size, table):
        return alloc(0.0)
    top = 1.0  # a large enough cut: the drops' scale is the measure's
    while not fits(space, alloc(top), limits, size, table):
        if top > 1e6:
            return alloc(top)
        top *= 4
    lo, hi = 0.0, top
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(space, alloc(mid), limits, size, table) else (mid, hi)
    return alloc(hi)


def _by_threshold(space: SearchSpace, curves: Mapping[str, list[tuple[float, float]]],
                  floor: float) -> Callable[[float], Policy]:
    """The threshold rule: ``x`` -> every group at the smallest ratio whose drop is <= x."""
    def alloc(x: float) -> Policy:
        return space.validate({g: min(space.high, max(floor, _smallest_ratio(c, x)))
                               for g, c in curves.items()})
    return alloc


def _by_saving(space: SearchSpace, curves: Mapping[str, list[tuple[float, float]]],
               floor: float, metric: str, size: int, table: LatencyTable | None
               ) -> Callable[[float], Policy]:
    """The greedy rule: ``x`` -> every group at the grid ratio that minimises its drop minus
    ``x`` times the fraction of ``metric`` that cutting it alone to that ratio saves."""
    costed = table if metric == "latency" else None

    def cost(g: str | None, r: float) -> float:
        pol = space.uniform(space.high) if g is None else {**space.uniform(space.high), g: r}
        return candidate_values(space, pol, size, costed)[metric]

    dense = cost(None, space.high)
    grid = sorted({r for r in space.ratio_choices() if r >= floor - 1e-9} | {space.high})
    options = {g: [(r, _drop_at(curves[g], r), (dense - cost(g, r)) / dense) for r in grid]
               for g in space.group_names}

    def alloc(x: float) -> Policy:
        return space.validate({g: min(opts, key=lambda o: (o[1] - x * o[2], o[0]))[0]
                               for g, opts in options.items()})
    return alloc


def _drop_at(curve: list[tuple[float, float]], r: float) -> float:
    """The drop of a ``(ratio, drop)`` curve at ``r``: linear between its points, infinite
    next to an infinite point, the first point's below them."""
    for (r0, d0), (r1, d1) in zip(curve, curve[1:]):
        if r0 <= r <= r1:
            if r == r1:
                return d1
            if not math.isfinite(d0):
                return d0
            return d0 + (d1 - d0) * (r - r0) / (r1 - r0)
    return curve[0][1] if r < curve[0][0] else 0.0
