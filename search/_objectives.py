"""The study's objectives, declared once: direction and the record key.

The study's directions, Ray Tune's metric names and modes, the Pareto front of the run folder
and the budget filter all read this table, so that ``pareto.csv`` and the dashboard (Optuna's
own front) rank the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunetune._registry import Registry


@dataclass(frozen=True)
class Objective:
    direction: Literal["maximize", "minimize"]
    key: str  # the key in a trial's result and record

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


OBJECTIVES: Registry[Objective] = Registry("objective", {
    "accuracy": Objective("maximize", "accuracy"),
    "flops": Objective("minimize", "flops"),
    "latency": Objective("minimize", "latency_ms"),
})


def record_key(metric: str) -> str:
    """The record key of an objective or budget metric (``latency`` -> ``latency_ms``; budget
    metrics that are not objectives, such as ``macs``, are their own key)."""
    return OBJECTIVES[metric].key if metric in OBJECTIVES else metric
