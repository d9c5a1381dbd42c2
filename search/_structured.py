"""The structured allocation space: a few coordinates that generate a whole allocation.

A trial of the per-group space draws one keep-ratio per group (~25 for MobileNetV2), and
almost every such allocation is far from where good ones lie: with 16-40 trials neither TPE
nor random sampling reaches them (bench ``search_ablation``). Good allocations are
structured: they keep the costly narrow widths and cut the cheap wide ones (the cost-aware
family), follow what the network's own sensitivity says, and differ from stage to stage
(MetaPruning ties widths per stage). So a trial samples

- ``alpha``: the cost-aware exponent (``search._priors.cost_aware``; 0 is uniform width);
- ``toward_sensitivity`` (with a sensitivity measurement): how far, in log-ratios, the
  allocation moves from the cost-aware one to the sensitivity allocation
  (``search._priors.sensitivity_allocation``; 1 is that allocation);
- ``depth_0`` … ``depth_{B-1}``: a log-multiplier per depth bucket, the buckets being the
  feature-map resolutions of the traced network (at most :data:`MAX_BUCKETS`, adjacent ones
  merged beyond it), so that every space has them;

and the allocation is ``exp((1 - t) log cost_aware(alpha) + t log sensitivity + depth[b(g)])``
clipped to the space's bounds. The budget repair then scales it onto the budget as for any
proposal. Every start point is a point of this space (uniform width: all zero; ``cost:A``:
``alpha = A``; ``sens:T``: ``toward_sensitivity = T``), so the sampler learns in the
coordinates it samples.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from prunetune.evaluators import LatencyTable, Sensitivity
from prunetune.spaces import Policy, SearchSpace

from ._priors import cost_aware, marginal_costs, sensitivity_allocation

ALPHA_RANGE: tuple[float, float] = (-1.5, 0.25)
DEPTH_RANGE: float = 0.6  # each depth log-multiplier is in [-DEPTH_RANGE, DEPTH_RANGE]
MAX_BUCKETS = 5


def depth_buckets(space: SearchSpace, max_buckets: int = MAX_BUCKETS) -> list[list[str]]:
    """The space's groups in buckets of equal feature-map resolution (their anchor layer's
    input at the trace size), in network order; beyond ``max_buckets`` resolutions, adjacent
    buckets are merged into ``max_buckets`` of about equal group counts."""
    hw = space.network.input_hw(space.trace_size)
    by_res: dict[tuple[int, int], list[str]] = {}
    for g in space.groups:
        by_res.setdefault(tuple(hw[g.anchor]), []).append(g.name)  # type: ignore[arg-type]
    buckets = list(by_res.values())
    if len(buckets) <= max_buckets:
        return buckets
    names = [n for b in buckets for n in b]
    res_of = {n: i for i, b in enumerate(buckets) for n in b}
    out: list[list[str]] = [[] for _ in range(max_buckets)]
    for n in names:  # by resolution rank, so a resolution is never split
        out[min(max_buckets - 1, res_of[n] * max_buckets // len(buckets))].append(n)
    return [b for b in out if b]


class StructuredAllocation:
    """The generator of one space's allocations from coordinates (see the module docstring).

    Args:
        space: The space (its rounding decides the sensitivity allocation's fit).
        limits: The budget (the sensitivity allocation is made at it).
        size: Input size for costs.
        metric: The cost-aware family's metric (``flops``, ``macs``, ``params``, ``latency``).
        table: The latency table, for latency budgets or a latency metric.
        sensitivity: The measurement; ``None``: no ``toward_sensitivity`` coordinate.
    """

    def __init__(self, space: SearchSpace, limits: Mapping[str, float], size: int,
                 metric: str = "flops", table: LatencyTable | None = None,
                 sensitivity: Sensitivity | None = None) -> None:
        self.space = space
        self.costs = marginal_costs(space, metric, size, table)
        self.buckets = depth_buckets(space)
        self._bucket_of = {n: i for i, b in enumerate(self.buckets) for n in b}
        self.sensitive: Policy | None = None
        if sensitivity is not None:
            self.sensitive = sensitivity_allocation(space, sensitivity, limits, size, table)

    @property
    def names(self) -> list[str]:
        """The coordinates, in the order a trial samples them."""
        return (["alpha"] + (["toward_sensitivity"] if self.sensitive is not None else [])
                + [f"depth_{i}" for i in range(len(self.buckets))])

    def suggest(self, trial: Any) -> Policy:
        """Sample the coordinates with an Optuna trial; the raw allocation."""
        params = {"alpha": trial.suggest_float("alpha", *ALPHA_RANGE)}
        if self.sensitive is not None:
            params["toward_sensitivity"] = trial.suggest_float("toward_sensitivity", 0.0, 1.0)
        for i in range(len(self.buckets)):
            params[f"depth_{i}"] = trial.suggest_float(f"depth_{i}", -DEPTH_RANGE, DEPTH_RANGE)
        return self.allocation(params)

    def allocation(self, params: Mapping[str, float]) -> Policy:
        """The raw allocation of a point (missing coordinates count as 0)."""
        space = self.space
        base = cost_aware(space, self.costs, float(params.get("alpha", 0.0)))
        t = float(params.get("toward_sensitivity", 0.0))
        if t and self.sensitive is None:
            raise ValueError("`toward_sensitivity` needs a sensitivity measurement; this "
                             "space has none (enable the sens: start point).")
        out = {}
        for g in space.group_names:
            log_r = math.log(base[g])
            if t:
                log_r = (1.0 - t) * log_r + t * math.log(self.sensitive[g])  # type: ignore[index]
            log_r += float(params.get(f"depth_{self._bucket_of[g]}", 0.0))
            out[g] = min(space.high, max(space.low, math.exp(log_r)))
        return space.validate(out)

    def point(self, spec: str) -> dict[str, float]:
        """The coordinates of a start point ``"uniform"``, ``"cost:A"`` or ``"sens:T"``.

        Raises:
            ValueError: a family the space cannot express (``ramp:``), ``A`` outside
                :data:`ALPHA_RANGE`, ``T`` outside [0, 1] or without a measurement.
        """
        p = {n: 0.0 for n in self.names}
        if spec == "uniform":
            return p
        family, _, value = spec.partition(":")
        v = float(value)
        if family == "cost" and ALPHA_RANGE[0] <= v <= ALPHA_RANGE[1]:
            p["alpha"] = v
        elif family == "sens" and self.sensitive is not None and 0.0 <= v <= 1.0:
            p["toward_sensitivity"] = v
        else:
            raise ValueError(
                f"start point {spec!r} is not a point of the structured space (cost:A with A in "
                f"[{ALPHA_RANGE[0]}, {ALPHA_RANGE[1]}], or sens:T with T in [0, 1] and a "
                f"sensitivity measurement); give such priors, or --allocation per-group.")
        return p
