"""Budgets: ``300M-FLOPs``, ``150M-MACs``, ``2.5M-params``, ``12ms-latency``, ``50%-FLOPs``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

FORMS = "300M-FLOPs, 150M-MACs, 2.5M-params, 12ms-latency, 50%-FLOPs (K/M/G, any case)"
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(k|m|g|%|ms)?\s*-\s*(flops|macs|params|latency)\s*$",
                 re.IGNORECASE)


class BudgetError(ValueError):
    """A budget that cannot be parsed or cannot be met."""


@dataclass(frozen=True)
class Budget:
    """One limit. ``value`` is absolute (FLOPs, MACs, params, ms) or, if ``relative``, a
    fraction of the dense base model's value."""

    metric: str
    value: float
    relative: bool = False
    text: str = ""

    def limit(self, base: Mapping[str, float]) -> float:
        """The absolute limit, given the base model's value of each metric."""
        return self.value * base[self.metric] if self.relative else self.value

    def __str__(self) -> str:
        return self.text or f"{self.value}-{self.metric}"


def parse_budget(text: str) -> Budget:
    """Parse one ``--budget`` value.

    Raises:
        BudgetError: The text is not one of the accepted forms; the message lists them.
    """
    m = _RE.match(text or "")
    if not m:
        raise BudgetError(f"--budget {text!r} is not understood; use one of: {FORMS}.")
    num, unit, metric = float(m.group(1)), (m.group(2) or "").lower(), m.group(3).lower()
    if num <= 0:
        raise BudgetError(f"--budget {text!r} must be positive; use one of: {FORMS}.")
    if unit == "%":
        if num > 100:
            raise BudgetError(f"--budget {text!r}: a relative budget must be at most 100%; "
                              f"accepted forms: {FORMS}.")
        return Budget(metric, num / 100.0, True, text)
    if metric == "latency":
        if unit != "ms":
            raise BudgetError(f"--budget {text!r}: latency budgets are in ms or %; "
                              f"accepted forms: {FORMS}.")
        return Budget(metric, num, False, text)
    if unit == "ms":
        raise BudgetError(f"--budget {text!r}: 'ms' goes with latency only; "
                          f"accepted forms: {FORMS}.")
    return Budget(metric, num * _SCALE[unit], False, text)


def parse_budgets(texts: str | Sequence[str]) -> list[Budget]:
    """Parse one budget or several (all must hold): ``"50%-FLOPs"`` or
    ``["300M-FLOPs", "12ms-latency"]``.

    Raises:
        BudgetError: none given, or one that :func:`parse_budget` refuses.
    """
    items = list(texts) if isinstance(texts, (list, tuple)) else [texts]
    if not items:
        raise BudgetError(f"no budget given; give at least one of: {FORMS}.")
    return [parse_budget(t) if isinstance(t, str) else _not_text(t) for t in items]


def _not_text(value: object) -> Budget:
    raise BudgetError(f"budget {value!r} is a {type(value).__name__}, not text; use one of: "
                      f"{FORMS}.")


def check_feasible(budgets: Sequence[Budget], base: Mapping[str, float],
                   smallest: Mapping[str, float]) -> None:
    """Refuse budgets that no candidate can meet or that the base model already meets.

    Raises:
        BudgetError: naming the budget and both numbers.
    """
    for b in budgets:
        lim = b.limit(base)
        if lim < smallest[b.metric]:
            raise BudgetError(
                f"--budget {b} ({_fmt(b.metric, lim)}) is below the smallest network the space "
                f"allows ({_fmt(b.metric, smallest[b.metric])}); raise the budget or lower --low.")
        if lim >= base[b.metric]:
            raise BudgetError(
                f"--budget {b} ({_fmt(b.metric, lim)}) is already met by the base model "
                f"({_fmt(b.metric, base[b.metric])}); nothing to prune, lower the budget.")


def _fmt(metric: str, v: float) -> str:
    if metric == "latency":
        return f"{v:.2f} ms"
    if metric == "flops":
        return f"{v / 1e6:,.2f}M FLOPs = {v / 2e6:,.2f}M MACs"
    if metric == "macs":
        return f"{v / 1e6:,.2f}M MACs = {2 * v / 1e6:,.2f}M FLOPs"
    return f"{v / 1e6:,.3f}M params"


format_metric = _fmt
