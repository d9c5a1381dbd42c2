"""Putting a proposal onto the budget before anything trains: costs of a policy, the common
scaling of an allocation onto a cost target, and the uniform-width baseline."""

from __future__ import annotations

from typing import Mapping

from prunetune.evaluators import LatencyTable, policy_cost
from prunetune.spaces import Policy, SearchSpace, get_space

from ._budget import BudgetError


def candidate_values(space: SearchSpace, policy: Mapping[str, float], size: int,
                     table: LatencyTable | None = None) -> dict[str, float]:
    """Analytic FLOPs, MACs, params and (with a table) predicted latency of a policy."""
    c = policy_cost(space, policy, size)
    vals: dict[str, float] = {"flops": c.flops, "macs": c.macs, "params": c.params}
    if table is not None:
        vals["latency"] = table.predict(space, policy)
    return vals


def fits(space: SearchSpace, policy: Mapping[str, float], limits: Mapping[str, float],
         size: int, table: LatencyTable | None = None) -> bool:
    vals = candidate_values(space, policy, size, table if "latency" in limits else None)
    return all(vals[m] <= lim for m, lim in limits.items())


def repair(space: SearchSpace, raw: Mapping[str, float], limits: Mapping[str, float],
           size: int, target: float = 1.0, table: LatencyTable | None = None,
           fill: bool = True) -> tuple[Policy, float]:
    """Scale all ratios of ``raw`` by one common factor onto ``target`` × the budget.

    The factor is the largest in ``[0, high / min(raw)]`` whose policy (ratios clipped to the
    space's bounds) costs at most ``target × limit`` for every limit: proposals over budget
    shrink, proposals far under the target grow. The relative allocation between groups is
    what the sampler chooses; ``target`` (a fraction of the budget) sets where on the cost axis
    the candidate lands. A target below the smallest network gives the smallest network.

    Channel counts are whole multiples of ``round_to``, so the scaled policy can sit a few
    percent under the target. With ``fill``, each group then grows by at most one channel step,
    those rounded down furthest first, while the target holds: candidates land within about
    one step of the budget (EagleEye keeps them within ±0.5%), so none is judged with budget
    left unspent. A grown group moves by one step from the common scaling.

    Returns:
        The repaired policy (always within ``limits``) and the factor applied.
    """
    raw = space.validate(raw)
    goal = {m: v * target for m, v in limits.items()}
    def clip(s: float) -> dict[str, float]:
        return {k: min(space.high, max(space.low, v * s)) for k, v in raw.items()}

    lo, hi = 0.0, space.high / min(raw.values())
    if fits(space, clip(hi), goal, size, table):
        lo = hi
    else:
        for _ in range(40):  # cost is monotone in the factor; bisect to ~1e-12 of the range
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(space, clip(mid), goal, size, table) else (lo, mid)
    pol = clip(lo)
    if fill:
        pol = _fill(space, pol, goal, size, table)
    if not fits(space, pol, limits, size, table):
        raise ValueError("No policy of the space meets the budget; check_feasible should "
                         "have refused it.")
    return pol, lo


def _fill(space: SearchSpace, policy: Policy, goal: Mapping[str, float], size: int,
          table: LatencyTable | None) -> Policy:
    """Grow each group by at most one ``round_to`` step, most rounded-down first, while
    ``goal`` holds."""
    full = space.full_channels()
    pol = dict(policy)
    ch = space.channels(pol)
    # How far rounding left each group below its scaled ratio, in channels.
    for g in sorted((g for g in pol if ch[g] < full[g]), key=lambda g: ch[g] - pol[g] * full[g]):
        grown = {**pol, g: min(space.high, (ch[g] + space.round_to) / full[g])}
        if fits(space, grown, goal, size, table):
            pol = grown
    return pol


def uniform_at_budget(space: SearchSpace, limits: Mapping[str, float], size: int,
                      table: LatencyTable | None = None) -> Policy:
    """The uniform-width baseline: every ratio equal, as large as the budget allows (not
    filled: it stays one width multiplier, as a user would apply it)."""
    return repair(space, space.uniform(space.high), limits, size, 1.0, table, fill=False)[0]


def smallest_fraction(space: SearchSpace, limits: Mapping[str, float], size: int,
                      table: LatencyTable | None = None) -> float:
    """The smallest network's cost as a fraction of the budget (the largest such fraction
    over the limits): cost targets below it cannot be met."""
    vals = candidate_values(space, space.uniform(space.low), size, table)
    fr = [vals[m] / lim for m, lim in limits.items() if m in vals]
    return min(1.0, max(fr)) if fr else 0.0


def with_round_to(space: SearchSpace, round_to: int) -> SearchSpace:
    """``space`` with channels kept in multiples of ``round_to`` instead."""
    if round_to == space.round_to:
        return space
    return get_space(space.name, **{**space.config(), "round_to": round_to})


def feasible_round_to(space: SearchSpace, choices: tuple[int, ...],
                      limits: Mapping[str, float], size: int,
                      table: LatencyTable | None = None) -> tuple[int, ...]:
    """The channel roundings of ``choices`` whose smallest network meets every limit, in the
    order given (a study's categorical choices must not change order on resume).

    A larger rounding keeps more channels at the lowest ratio (at least one multiple of it per
    group), so under a tight budget its smallest network can be over it: a trial that drew it
    would have no candidate.

    Raises:
        BudgetError: ``choices`` is not empty and none of them meets the limits.
    """
    ok = []
    for r in dict.fromkeys(choices):
        s = with_round_to(space, r)
        if fits(s, s.uniform(s.low), limits, size, table):
            ok.append(r)
    if choices and not ok:
        raise BudgetError(f"--round-to-choices {list(dict.fromkeys(choices))}: the smallest "
                          f"network of each is over the budget; add a smaller channel multiple "
                          f"(e.g. {space.round_to}), raise the budget or lower --low.")
    return tuple(ok)
