"""What a study found: trial records, the Pareto front, ``pareto.csv/json/png`` and a table."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from prunetune.evaluators import atomic_write_bytes, atomic_write_text

from ._objectives import OBJECTIVES, record_key
from ._pareto import pareto_indices

COLUMNS = ("trial", "accuracy", "flops", "macs", "params", "latency_ms", "round_to", "baseline")


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat record per completed trial, from its values and user attributes."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        u = t.user_attrs
        lat = u.get("latency", {}).get("median_ms", float("nan"))
        out.append({"trial": t.number, "accuracy": t.values[0], "flops": u["flops"],
                    "macs": u["macs"], "params": u["params"], "latency_ms": lat,
                    "baseline": u.get("baseline", ""), "round_to": u.get("round_to"),
                    "policy": u["policy"],
                    "channels": u["channels"], "history": u.get("history", []),
                    "wall_seconds": u.get("wall_seconds"), "node": u.get("node")})
    return out


def at_budget(records: Sequence[Mapping[str, Any]], limits: Mapping[str, float],
              near: float) -> list[dict[str, Any]]:
    """Records within every limit and at least ``near`` × each limit, best quick score first."""
    out = [dict(r) for r in records
           if all(near * lim <= r[record_key(m)] <= lim for m, lim in limits.items())]
    return sorted(out, key=lambda r: -r["accuracy"])


def front(records: Sequence[Mapping[str, Any]], limits: Mapping[str, float],
          objectives: Sequence[str]) -> list[dict[str, Any]]:
    """Non-dominated records, over the study's ``objectives``, among those within every limit;
    sorted by FLOPs. (Optuna's own front, which the dashboard shows, ranks the same values.)"""
    ok = at_budget(records, limits, 0.0)
    keys = [(OBJECTIVES[o].key, OBJECTIVES[o].maximize) for o in objectives
            if not any(math.isnan(r[OBJECTIVES[o].key]) for r in ok)]
    pts = [[r[k] for k, _ in keys] for r in ok]
    idx = pareto_indices(pts, [mx for _, mx in keys])
    return sorted((ok[i] for i in idx), key=lambda r: r["flops"])


def write_front(run_dir: str, pareto: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(list(COLUMNS) + ["policy"])
    for r in pareto:
        w.writerow([r[c] for c in COLUMNS] + [json.dumps(r["policy"])])
    atomic_write_text(os.path.join(run_dir, "pareto.csv"), buf.getvalue())
    atomic_write_text(os.path.join(run_dir, "pareto.json"), json.dumps(list(pareto), indent=1))


def plot_front(path: str, records: Sequence[Mapping[str, Any]],
               pareto: Sequence[Mapping[str, Any]], *, budget_flops: float | None,
               dense: Mapping[str, float], title: str) -> None:
    """Accuracy against FLOPs; latency as colour; budget line, dense base, uniform baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    lat = [r["latency_ms"] for r in records]
    has_lat = not any(math.isnan(v) for v in lat)
    colour = {"c": lat, "cmap": "viridis"} if has_lat else {"color": "tab:blue"}
    sc = ax.scatter([r["flops"] / 1e6 for r in records], [100 * r["accuracy"] for r in records],
                    s=22, alpha=0.8, label="trials", **colour)
    if has_lat:
        fig.colorbar(sc, ax=ax, label="latency (ms)")
    ax.scatter([r["flops"] / 1e6 for r in pareto], [100 * r["accuracy"] for r in pareto],
               s=110, facecolors="none", edgecolors="tab:red", label="Pareto front")
    # The accuracy-vs-FLOPs staircase: the best accuracy reachable at each FLOPs level.
    stair, best = [], -1.0
    for r in sorted(records, key=lambda r: r["flops"]):
        if r["accuracy"] > best:
            best = r["accuracy"]
            stair.append((r["flops"] / 1e6, 100 * best))
    if stair:
        xs = [p[0] for p in stair] + [budget_flops / 1e6 if budget_flops else stair[-1][0]]
        ys = [p[1] for p in stair] + [stair[-1][1]]
        ax.step(xs, ys, where="post", color="tab:red", lw=1.2, alpha=0.7)
    uni = [r for r in records if r.get("baseline") == "uniform"]
    if uni:
        ax.scatter([uni[0]["flops"] / 1e6], [100 * uni[0]["accuracy"]], marker="s", s=90,
                   color="tab:orange", edgecolor="k", zorder=5, label="uniform width")
    ax.scatter([dense["flops"] / 1e6], [100 * dense["accuracy"]], marker="*", s=180,
               color="gold", edgecolor="k", zorder=5, label="dense base")
    if budget_flops:
        ax.axvline(budget_flops / 1e6, color="k", ls="--", lw=1, label="budget")
    ax.set_xlabel("FLOPs (M) = 2 x MACs")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def front_table(pareto: Sequence[Mapping[str, Any]], dense: Mapping[str, float]) -> str:
    head = (f"{'trial':>5} {'val acc':>8} {'FLOPs':>10} {'MACs':>10} {'params':>9} "
            f"{'latency':>9}  note")
    lines = [head, "-" * len(head)]
    for r in pareto:
        lines.append(f"{r['trial']:>5} {100 * r['accuracy']:>7.2f}% {r['flops'] / 1e6:>9.2f}M "
                     f"{r['macs'] / 1e6:>9.2f}M {r['params'] / 1e6:>8.3f}M "
                     f"{_ms(r['latency_ms'])}  {r.get('baseline', '')}")
    lines.append(f"{'dense':>5} {100 * dense['accuracy']:>7.2f}% {dense['flops'] / 1e6:>9.2f}M "
                 f"{dense['macs'] / 1e6:>9.2f}M {dense['params'] / 1e6:>8.3f}M "
                 f"{_ms(dense.get('latency_ms', float('nan')))}  base")
    return "\n".join(lines)


def _ms(v: float) -> str:
    return f"{'-':>9}" if math.isnan(v) else f"{v:>7.2f}ms"


def emit(log: Callable[[str], None], text: str) -> None:
    for line in text.splitlines():
        log(line)
