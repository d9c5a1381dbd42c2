"""Pareto fronts and hypervolume over (maximised accuracy, minimised costs)."""

from __future__ import annotations

from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, mx in zip(a, b, maximize):
        if (x < y) if mx else (x > y):
            return False
        if (x > y) if mx else (x < y):
            better = True
    return better


def pareto_indices(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are all kept)."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, maximize) for j, q in enumerate(points) if j != i)]


def hypervolume_2d(points: Sequence[tuple[float, float]], ref_cost: float,
                   ref_acc: float = 0.0) -> float:
    """Area dominated by (accuracy ↑, cost ↓) points, bounded by ``(ref_acc, ref_cost)``."""
    pts = sorted((c, a) for a, c in points if c < ref_cost and a > ref_acc)
    front: list[tuple[float, float]] = []
    for c, a in pts:  # ascending cost: a point counts only if it beats every cheaper one
        if not front or a > front[-1][1]:
            front.append((c, a))
    area = 0.0
    for k, (c, a) in enumerate(front):  # each front point owns the strip up to the next one
        nxt = front[k + 1][0] if k + 1 < len(front) else ref_cost
        area += (nxt - c) * (a - ref_acc)
    return area
