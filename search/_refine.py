"""Multi-fidelity: successive halving over the best candidates at the budget, through Ray Tune.

The study's quick score (adaptive BN + a few steps) is cheap enough for every trial but does
not separate candidates of *equal cost* well; a longer fine-tune does. So after the study the
``top`` candidates at the budget (cost within ``near`` of it, by quick score) get a short
distilled fine-tune of ``steps[0]`` steps; the better half of them get ``steps[1]`` steps,
and so on. The pick is the best candidate of the last rung. The rungs run on ``workers`` Ray
actors made once for the whole refinement (torch imported and the base unpacked once in
each; a Ray Tune run a rung started new trial actors, ~5 s a rung on two cores, longer than a
short rung's work); each actor keeps the resources it was made with, a GPU share included,
as a trial actor did. Every candidate in a rung starts again from the pruned base with the
same batches (common random numbers), so the rung's numbers are comparable with each other.

The sampler never sees these numbers: they are stored as the study's user attribute
``refine`` (and ``refine.json``), not as trial values, so TPE keeps learning from one
comparable quick score per trial. (Ray's ``OptunaSearch`` would tell a trial that a
scheduler stopped early as COMPLETE with its last, low-fidelity value; keeping the rungs out
of the study avoids mixing fidelities in what the sampler learns from.) The halving is
synchronous rather than ASHA: with a handful of candidates and two workers, ASHA's early
promotions would be decided against almost no other results.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from prunetune._text import first_line
from prunetune.evaluators import Eta, atomic_write_text

from ._results import at_budget
from ._study import Problem


@dataclass(frozen=True)
class RefineSettings:
    """Successive halving over the candidates at the budget.

    Attributes:
        top: Sampled candidates entering the first rung, best quick score first (0 or 1
            turns refinement off).
        seeded: Also enter the enqueued start points at the budget (uniform width and the
            cost-aware priors) whatever their quick score: the quick score is least reliable
            between allocations of equal cost, and uniform width is the one to beat.
        steps: Fine-tune steps of each rung; each rung keeps the better ``1 / eta`` share.
        eta: Halving rate.
        near: A candidate is "at the budget" when its cost is at least ``near`` × the limit
            (for every limit given).
        lr: Peak learning rate of the rungs' cosine schedule.
        rank_by: ``accuracy``, ``loss`` or ``kl`` on the validation split (see ScoreConfig).
    """

    top: int = 4
    seeded: bool = True
    steps: tuple[int, ...] = (100, 300)
    eta: int = 2
    near: float = 0.95
    lr: float = 0.01
    rank_by: str = "kl"

    def __post_init__(self) -> None:
        """The refinement options' checks (the messages name the command line's)."""
        if self.top < 0:
            raise ValueError(f"--refine-top must be >= 0, but got {self.top}.")
        text = ",".join(map(str, self.steps))
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"--refine-steps {text!r} must be a comma list of numbers >= 1, "
                             f"e.g. 100,300.")
        if any(b <= s for s, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f"--refine-steps {text!r} must increase from rung to rung (each "
                             f"rung fine-tunes the better half longer), e.g. 100,300.")
        if self.eta < 2:
            raise ValueError(f"`eta` must be >= 2, but got {self.eta}.")
        if not 0.0 < self.near <= 1.0:
            raise ValueError(f"`near` must be in (0, 1], but got {self.near}.")

    @property
    def enabled(self) -> bool:
        return self.top >= 2


def _candidates(records: Sequence[Mapping[str, Any]], problem: Problem,
                settings: RefineSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The start points refined (when ``settings.seeded``) and all the candidates: those
    start points, then the best ``settings.top`` sampled ones at the budget."""
    near = at_budget(records, problem.limits, settings.near)
    seeds = [r for r in near if r.get("baseline")] if settings.seeded else []
    cands = seeds + [r for r in near if not r.get("baseline") or not settings.seeded][
        : settings.top]
    return seeds, cands


def _run_rung(pool: list[Any], evaluate: Any, grid: list[dict[str, Any]], steps: int,
              settings: RefineSettings, progress: _RefineProgress) -> list[dict[str, Any]]:
    """Score each candidate of ``grid`` (``{"trial", "channels"}``) with ``steps`` distilled
    steps on the actors of ``pool`` running ``evaluate`` (its object reference), one candidate
    an actor at a time; their results, by trial number."""
    import ray

    score = {"steps": steps, "lr": settings.lr, "report_every": steps, "distill": True,
             "rank_by": settings.rank_by}
    todo = [{**g, "score": score} for g in grid]
    idle = list(pool)
    running: dict[Any, tuple[Any, dict[str, Any]]] = {}
    results = []
    while todo or running:
        while todo and idle:
            actor, c = idle.pop(), todo.pop(0)
            running[actor.run.remote([evaluate], c)] = (actor, c)
        ready, _ = ray.wait(list(running), num_returns=1)
        actor, c = running.pop(ready[0])
        idle.append(actor)
        try:
            m = ray.get(ready[0])
            failed = m.get("failure") or ""
        except Exception as e:  # noqa: BLE001 - a candidate that fails is ranked last
            cause = getattr(e, "cause", None)  # a RayTaskError's: what the evaluation raised
            why: BaseException = cause if isinstance(cause, BaseException) else e
            m, failed = {}, first_line(why) or type(why).__name__
        r = {"trial": c["trial"], "score": float("-inf") if failed else m["score"],
             "metrics": m.get("attrs", {}).get("metrics", {}), "failure": failed}
        progress.done(r)
        results.append(r)
    results.sort(key=lambda r: r["trial"])
    return results


def _rung_line(k: int, steps: int, settings: RefineSettings,
               ranked: list[dict[str, Any]]) -> str:
    """The log line of rung ``k``: its candidates, best first."""
    return (f"refine rung {k + 1}/{len(settings.steps)} ({steps} distilled steps, "
            f"{settings.rank_by}): " + ", ".join(
                f"trial {r['trial']} {_fmt(r, settings.rank_by)}" for r in ranked))


def run_refine(records: Sequence[Mapping[str, Any]], problem: Problem, settings: RefineSettings,
               evaluate: Callable[[Mapping[str, Any]], dict], run_dir: str, *, workers: int,
               gpus_per_trial: float = 0.0, saved: Mapping[str, Any] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Successive halving over the best candidates at the budget (and the start points).

    Args:
        records: The study's trial records (``search.trial_records``).
        evaluate: The injected evaluation (as for ``run_study``); each rung calls it with
            ``{"trial", "channels", "score": {steps, lr, distill, rank_by, ...}}``.
        saved: A previous result of this function (resume); rungs it holds for the same
            settings and candidates are reused, not re-run.

    Returns:
        ``{"settings", "rungs": [{"steps", "results": [{"trial", "score", "metrics"}]}],
        "pick": trial number or None}``; also written to ``run_dir/refine.json``.
    """
    import ray

    seeds, cands = _candidates(records, problem, settings)
    # As JSON holds it (tuples become lists), so a saved result compares equal on resume.
    out: dict[str, Any] = {"settings": json.loads(json.dumps(asdict(settings))), "rungs": [],
                           "pick": None, "candidates": [r["trial"] for r in cands]}
    if not settings.enabled or len(cands) < 2:
        out["pick"] = cands[0]["trial"] if cands else None
        return out
    reuse = saved if (saved and saved.get("settings") == out["settings"]
                      and saved.get("candidates") == out["candidates"]) else None
    by_trial = {r["trial"]: r for r in cands}
    alive = [r["trial"] for r in cands]
    pool: list[Any] = []
    evaluate_ref: Any = None

    def actors() -> tuple[list[Any], Any]:
        """The refinement's actors, made when a rung first runs (not on a resume that holds
        every rung), and the evaluation in the object store, which the driver holds and each
        call names (not the constructor: Ray cannot restore an actor's constructor arguments
        from the object store, ray-project/ray#53727). Restarted (on another node, if their
        own is lost) with the call retried, as Ray retries a task: a lost actor fails no
        candidate."""
        nonlocal evaluate_ref
        if not pool:
            actor = ray.remote(num_cpus=problem.threads, num_gpus=gpus_per_trial,
                               max_restarts=2, max_task_retries=2)(_RungActor)
            evaluate_ref = ray.put(evaluate)
            pool.extend(actor.remote() for _ in range(min(workers, len(cands))))
        return pool, evaluate_ref

    progress = _RefineProgress(len(cands), settings, log)
    log(f"refine: {len(cands)} candidates at the budget ({len(seeds)} start points, "
        f"{len(cands) - len(seeds)} best sampled), rungs of "
        f"{', '.join(map(str, settings.steps))} distilled steps, keeping 1/{settings.eta} each")
    try:
        _run_rungs(out, reuse, alive, by_trial, actors, settings, progress, run_dir, log)
    finally:
        for a in pool:
            ray.kill(a)
    out["pick"] = max(out["rungs"][-1]["results"], key=lambda r: r["score"])["trial"]
    atomic_write_text(os.path.join(run_dir, "refine.json"), json.dumps(out, indent=1))
    return out


def _run_rungs(out: dict[str, Any], reuse: Mapping[str, Any] | None, alive: list[int],
               by_trial: Mapping[int, Mapping[str, Any]],
               actors: Callable[[], tuple[list[Any], Any]],
               settings: RefineSettings, progress: _RefineProgress, run_dir: str,
               log: Callable[[str], None]) -> None:
    """The rungs, each into ``out["rungs"]`` and ``refine.json`` as it ends; a rung that
    ``reuse`` (a resumed run's result) holds for the same candidates is taken from it."""
    for k, steps in enumerate(settings.steps):
        t0 = time.perf_counter()
        old = reuse["rungs"][k] if reuse and k < len(reuse["rungs"]) else None
        progress.rung(k, len(alive))
        if old and [r["trial"] for r in old["results"]] == sorted(alive):
            results = old["results"]
            progress.skip(len(alive))
        else:
            grid = [{"trial": t, "channels": by_trial[t]["channels"]} for t in sorted(alive)]
            results = _run_rung(*actors(), grid, steps, settings, progress)
        ranked = sorted(results, key=lambda r: -r["score"])
        out["rungs"].append({"steps": steps, "results": results,
                             "seconds": time.perf_counter() - t0})
        log(_rung_line(k, steps, settings, ranked))
        atomic_write_text(os.path.join(run_dir, "refine.json"), json.dumps(out, indent=1))
        keep = max(1, len(alive) // settings.eta)
        alive = [r["trial"] for r in ranked[:keep]]
        if len(alive) == 1 and k < len(settings.steps) - 1:
            break


class _RefineProgress:
    """One line per finished candidate of a rung (n/N, its score, elapsed, ETA of the whole
    refinement: the distilled steps left at the rate so far)."""

    def __init__(self, n: int, settings: RefineSettings, log: Callable[[str], None]) -> None:
        self.settings, self.log = settings, log
        total, alive = 0, n
        for steps in settings.steps:  # the rungs' sizes if none stops early
            total += alive * steps
            alive = max(1, alive // settings.eta)
        self.eta = Eta(total)
        self.k = self.size = self.finished = 0

    def rung(self, k: int, size: int) -> None:
        self.k, self.size, self.finished = k, size, 0

    def skip(self, n: int) -> None:
        """``n`` candidates of the rung taken from a resumed run."""
        self.eta.skip(n * self.settings.steps[self.k])

    def done(self, r: Mapping[str, Any]) -> None:
        """The line of a finished candidate (``{"trial", "score", "failure"}``)."""
        self.finished += 1
        rank_by = self.settings.rank_by
        score = ("failed" if r["failure"] else f"acc {r['score']:.2%}" if rank_by == "accuracy"
                 else f"{rank_by} {-r['score']:.4f}")
        self.log(f"  refine rung {self.k + 1}/{len(self.settings.steps)}: "
                 f"[{self.finished}/{self.size}] trial {r['trial']} {score} | "
                 f"{self.eta.step(self.settings.steps[self.k])}")


class _RungActor:
    """A worker of the refinement: the injected evaluation, run on one candidate (its
    ``score`` settings given) after another, as the study's trials run it. The evaluation
    comes as its object reference (in a list, so that Ray passes the reference, not the value)
    and is fetched once."""

    def __init__(self) -> None:
        self.evaluate: Callable[[Mapping[str, Any]], dict] | None = None

    def run(self, evaluate: list[Any], candidate: dict) -> dict:
        if self.evaluate is None:
            import ray

            self.evaluate = ray.get(evaluate[0])
        return dict(self.evaluate(candidate))


def _fmt(r: Mapping[str, Any], rank_by: str) -> str:
    if r.get("failure"):
        return "failed"
    acc = r["metrics"].get("accuracy", float("nan"))
    return (f"acc {acc:.2%}" if rank_by == "accuracy"
            else f"{rank_by} {-r['score']:.4f} (acc {acc:.2%})")


def refine_order(records: Sequence[Mapping[str, Any]], refined: Mapping[str, Any] | None
                 ) -> list[dict[str, Any]]:
    """Records best first: by the last rung each reached (later rungs first), then by that
    rung's score, then by the quick score."""
    pos: dict[int, tuple[int, float]] = {}
    for k, rung in enumerate((refined or {}).get("rungs", [])):
        for r in rung["results"]:
            pos[r["trial"]] = (k, r["score"])
    return sorted((dict(r) for r in records),
                  key=lambda r: (-pos.get(r["trial"], (-1, 0.0))[0],
                                 -pos.get(r["trial"], (-1, 0.0))[1], -r["accuracy"]))
