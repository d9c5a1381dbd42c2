"""Benchmarks of search quality *at the budget* (issue: search that beats uniform width).

- ``score_fidelity_at_budget``: candidates all within 95–100% of one FLOPs budget; for each,
  several quick scores (adaptive BN only, the 40-step default, KD fine-tunes of growing length;
  accuracy, validation loss, KL to the dense model) and the test accuracy after the final
  fine-tune (mean of 2 seeds). Kendall tau per score says which one ranks equal-cost
  candidates the way a real fine-tune does.
- ``search_vs_uniform``: the search's pick against uniform width at 30/50/70% FLOPs, both
  given the identical final fine-tune over several seeds, paired: mean gain and its 95% CI.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from typing import Any, Callable

import torch

from prunetune.evaluators import (FinetuneConfig, ImageData, ScoreConfig, adaptive_bn,
                                  evaluate, evaluate_metrics, finetune, load_data, load_into,
                                  policy_cost, prune_to_channels, read_state_dict,
                                  score_candidate, train_steps)
from prunetune.spaces import get_space


def cifar(per_class: int | None, val_fraction: float, budget: float, cifar_root: str,
          ckpt: str, seed: int = 0, test_per_class: int | None = None,
          model: str = "mobilenet_v2", test_half: str | None = None):
    data = load_data(cifar_root, per_class=per_class, val_fraction=val_fraction, seed=seed,
                     test_per_class=test_per_class, test_half=test_half)
    space = get_space(model, num_classes=10)
    base = space.build_model()
    load_into(base, read_state_dict(ckpt), ckpt, space.head)
    limits = {"flops": budget * policy_cost(space, space.uniform(1.0), 32).flops}
    return data, space, base, limits


# The benchmarks' final fine-tune (FinetuneConfig's defaults: KD from the dense base, peak LR
# 0.005 after a half-epoch warm-up, cosine); results record it as "final_recipe".
FINAL = {"lr": 0.005, "batch_size": 64, "distill": True}


def final_recipe(epochs: int) -> dict:
    from dataclasses import asdict

    return asdict(FinetuneConfig(epochs=epochs, **FINAL))


def final_acc(channels: dict, data: ImageData, space, base, epochs: int, seed: int,
              importance: str = "l1", **recipe: Any) -> float:
    """Test accuracy after the benchmark's final fine-tune (KD from the dense base); ``recipe``
    overrides FINAL's FinetuneConfig fields (e.g. ``lr``, ``warmup_epochs``)."""
    from prunetune.evaluators import importance_gradients

    model = prune_to_channels(base, space, channels, importance,
                              grads=importance_gradients(importance, base, data, seed))
    adaptive_bn(model, data, 20, 64, torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as d:
        m = finetune(model, data, FinetuneConfig(epochs=epochs, seed=seed,
                                                 **{**FINAL, **recipe}),
                     d, teacher=base, log=lambda s: None)
    return m["test_acc"]


def onto_budget(space, name: str, raw: dict, limits: dict, size: int = 32) -> dict:
    """``raw`` repaired onto the budget: filled to it, except uniform width, which stays one
    width multiplier (as the search's baseline does)."""
    from prunetune.search import repair

    return repair(space, raw, limits, size, 1.0, fill=name != "uniform")[0]


@torch.inference_mode()
def val_metrics(model, data: ImageData, teacher_logits: torch.Tensor) -> dict[str, float]:
    """``evaluators.evaluate_metrics`` on the validation split, under this benchmark's keys."""
    m = evaluate_metrics(model, data, data.val, teacher_logits)
    return {"acc": m["accuracy"], "ce": m["loss"], "kl": m["kl"]}


def score_variants(base, space, data: ImageData, channels: dict, teacher_logits: torch.Tensor,
                   milestones: tuple[int, ...], seed: int = 0) -> dict[str, Any]:
    """Every score variant of one candidate; all candidates see the same batches (same seed)."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    res, _ = score_candidate(base, space, data, channels, ScoreConfig(seed=seed))
    out["default_acc"] = res.accuracy
    out["default_seconds"] = time.perf_counter() - t0
    # The score that makes the pick: the refinement's last rung, exactly as the search runs it.
    from prunetune.search import RefineSettings

    rs = RefineSettings()
    t0 = time.perf_counter()
    res, _ = score_candidate(base, space, data, channels, ScoreConfig(
        seed=seed, steps=rs.steps[-1], lr=rs.lr, report_every=rs.steps[-1], distill=True,
        rank_by=rs.rank_by))
    out["refine"] = {"score": res.score, "acc": res.accuracy, "rank_by": rs.rank_by,
                     "steps": rs.steps[-1]}
    out["refine_seconds"] = time.perf_counter() - t0
    model = prune_to_channels(base, space, channels).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    adaptive_bn(model, data, 20, 64, gen)
    out["bn"] = val_metrics(model, data, teacher_logits)
    out["bn_seconds"] = time.perf_counter() - t0
    opt, done = None, 0
    for m in milestones:  # constant LR + KD, so each milestone is a snapshot of one run
        opt = train_steps(model, data, m - done, lr=0.01, batch_size=64, gen=gen,
                          teacher=base, kd_weight=0.5, schedule="constant", start_step=done,
                          optimizer=opt)
        done = m
        out[f"kd{m}"] = val_metrics(model, data, teacher_logits)
        out[f"kd{m}_seconds"] = time.perf_counter() - t0
    return out


def at_budget_candidates(space, limits: dict, n_random: int, seed: int,
                         size: int = 32) -> list[dict]:
    """Uniform width, cost-aware (alpha -1, -0.5, +0.5) and depth-ramp (beta -1, +1) allocations
    and random allocations, all repaired onto the budget; only those landing within 95–100% of
    it are kept."""
    from prunetune.search import cost_aware, depth_ramp, marginal_costs

    costs = marginal_costs(space, "flops", size)
    raws = [("uniform", space.uniform(space.high))]
    raws += [(f"cost_aware_{a:g}", cost_aware(space, costs, a)) for a in (-1.0, -0.5, 0.5)]
    raws += [(f"depth_{b:g}", depth_ramp(space, b)) for b in (-1.0, 1.0)]
    n_fixed = len(raws)
    rng = random.Random(seed)
    k = 0
    while len(raws) < n_fixed + n_random and k < 20 * n_random:
        k += 1
        raws.append((f"random_{k}", {g: rng.choice(space.ratio_choices())
                                     for g in space.group_names}))
    out = []
    for name, raw in raws:
        pol = onto_budget(space, name, raw, limits, size)
        fl = policy_cost(space, pol, size).flops
        if fl >= 0.95 * limits["flops"] or name == "uniform":
            out.append({"name": name, "policy": pol, "channels": space.channels(pol),
                        "flops": fl, "budget_fraction": fl / limits["flops"]})
    return out[: n_fixed + n_random]


def _kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def score_fidelity_at_budget(quick: bool, cifar_root: str, ckpt: str,
                             partial: Callable[[dict], Any] | None = None) -> dict:
    torch.set_num_threads(2)
    # 500 images a class (4,500 train / 500 val), final 2 epochs x 2 seeds, 3,000 test
    # images: 16 candidates fit in ~20 min on 2 cores.
    per_class, n_random, epochs, seeds = (60, 1, 1, (0,)) if quick else (500, 10, 2, (0, 1))
    milestones = (10, 20) if quick else (40, 100, 300)
    budget = 0.5
    data, space, base, limits = cifar(per_class, 0.1, budget, cifar_root, ckpt,
                                      test_per_class=None if quick else 300)
    with torch.inference_mode():
        base.eval()
        t_logits = torch.cat([base(x) for x, _ in data.batches(data.val, 256)])
    cands = at_budget_candidates(space, limits, n_random, seed=0)
    rows: list[dict] = []
    for c in cands:
        row = {k: c[k] for k in ("name", "flops", "budget_fraction")}
        row["scores"] = score_variants(base, space, data, c["channels"], t_logits, milestones)
        t0 = time.perf_counter()
        row["final_test_acc"] = [final_acc(c["channels"], data, space, base, epochs, s)
                                 for s in seeds]
        row["final_seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(row, flush=True)
        if partial is not None and len(rows) >= 3 and len(rows) < len(cands):
            partial(_fidelity_summary(rows, milestones, budget, per_class, data, epochs, seeds))
    return _fidelity_summary(rows, milestones, budget, per_class, data, epochs, seeds)


def _fidelity_summary(rows: list[dict], milestones: tuple[int, ...], budget: float,
                      per_class: int | None, data: ImageData, epochs: int,
                      seeds: tuple[int, ...]) -> dict:
    final = [statistics.fmean(r["final_test_acc"]) for r in rows]

    def score_of(r: dict, name: str) -> float:
        if name == "refine":  # already higher-is-better
            return r["scores"]["refine"]["score"]
        stage, metric = name.rsplit("_", 1)
        v = r["scores"]["default_acc"] if name == "default_acc" else r["scores"][stage][metric]
        return v if metric == "acc" else -v  # losses: lower is better

    names = ["refine", "default_acc"] + [f"{st}_{m}" for st in
                                         ["bn"] + [f"kd{m}" for m in milestones]
                                         for m in ("acc", "ce", "kl")]
    variants = {name: _kendall([score_of(r, name) for r in rows], final) for name in names}
    # The ranking that decides the pick is among the good candidates: tau over the 8 best by
    # final accuracy, and which candidate each score would pick.
    top = sorted(range(len(rows)), key=lambda i: -final[i])[:8]
    top8 = {name: _kendall([score_of(rows[i], name) for i in top], [final[i] for i in top])
            for name in names}
    picks = {name: max(rows, key=lambda r: score_of(r, name))["name"] for name in names}
    seed_diffs = [abs(r["final_test_acc"][0] - r["final_test_acc"][-1]) for r in rows]
    uni = next((f for r, f in zip(rows, final) if r["name"] == "uniform"), None)
    return {"budget": f"{budget:.0%}-FLOPs at 32x32", "candidates": len(rows),
            "train_images_per_class": per_class, "val_images": len(data.val),
            "test_images": len(data.test), "final_epochs": epochs, "final_seeds": list(seeds),
            "milestones": list(milestones), "kendall_tau": variants,
            # The pick is made by the refinement's last rung (RefineSettings defaults); the
            # trials' quick score only chooses who enters it.
            "default_kendall_tau": variants["refine"],
            "kendall_tau_top8": top8, "picks": picks,
            "trial_score_kendall_tau": variants["default_acc"],
            "final_mean_test_acc": {r["name"]: f for r, f in zip(rows, final)},
            "beat_uniform": None if uni is None else sum(f > uni for f in final),
            "final_seed_abs_diff_pp": {"median": 100 * statistics.median(seed_diffs),
                                       "max": 100 * max(seed_diffs)},
            "rows": rows,
            "goal": "tau >= 0.7 at the budget for the score the search uses by default"}


def paired_ci(diffs: list[float]) -> tuple[float, tuple[float, float]]:
    """Mean of paired differences and its two-sided 95% t interval."""
    from scipy.stats import t

    n = len(diffs)
    m = statistics.fmean(diffs)
    if n < 2:
        return m, (math.nan, math.nan)
    half = t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return m, (m - half, m + half)


def search_pick(budget: float, cifar_root: str, ckpt: str, *, per_class: int | None,
                test_per_class: int | None, score: ScoreConfig, refine: Any,
                study: Any, model: str = "mobilenet_v2") -> tuple[dict, list, Any, float]:
    """One search at ``budget`` × the dense FLOPs through the command line's entry point
    (searching only: no finals), on the data split of ``study.seed``; returns its pick, all
    trial records, the refinement's rungs and the wall time."""
    from prunetune.pipeline import SearchJob, run_search
    from prunetune.search import final_candidates, parse_budget

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        summary = run_search(SearchJob(
            budgets=[parse_budget(f"{round(budget * 100)}%-FLOPs")], out=d, model=model,
            study=study, score=score, refine=refine, data=cifar_root, per_class=per_class,
            test_per_class=test_per_class, checkpoint=ckpt, input_size=32,
            latency="off", cpus=2, final_top=0, final_baseline=False, export=False),
            log=lambda m: print(m, flush=True) if m.startswith("refine") else None)
    records, refined = summary["records"], summary["refine"]
    limits = {"flops": budget * summary["base"]["flops"]}
    pick = final_candidates(records, limits, refined, 1, with_uniform=False)[0]
    return pick, records, refined, time.perf_counter() - t0


def pick_vs_uniform(budget: float, cifar_root: str, ckpt: str, *, per_class: int | None,
                    test_per_class: int | None, trials: int, epochs: int, seeds: tuple,
                    score: ScoreConfig, refine: Any, model: str = "mobilenet_v2",
                    partial: Callable[[dict], Any] | None = None) -> dict:
    """One search at ``budget`` × the dense FLOPs through the command line's entry point, then
    its pick and uniform width given the identical final fine-tune per seed: the paired gain."""
    from prunetune.search import StudySettings

    data, space, base, limits = cifar(per_class, 0.1, budget, cifar_root, ckpt,
                                      test_per_class=test_per_class, model=model)
    pick, records, refined, search_s = search_pick(
        budget, cifar_root, ckpt, per_class=per_class, test_per_class=test_per_class,
        score=score, refine=refine, model=model,
        study=StudySettings(trials=trials, workers=2, objectives=("accuracy", "flops")))
    uni = next(r for r in records if r["baseline"] == "uniform")
    arms: dict[str, list] = {"pick": [], "uniform": []}
    for s in seeds:
        arms["pick"].append(final_acc(pick["channels"], data, space, base, epochs, s))
        arms["uniform"].append(arms["pick"][-1] if pick["trial"] == uni["trial"] else
                               final_acc(uni["channels"], data, space, base, epochs, s))
        print(f"seed {s}: pick {arms['pick'][-1]:.4f}, uniform {arms['uniform'][-1]:.4f}",
              flush=True)
        if partial is not None and len(arms["pick"]) < len(seeds):  # hour-long runs
            partial({"budget": budget, "pick_trial": pick["trial"],
                     "search_seconds": search_s, **arms})
    diffs = [100 * (a - b) for a, b in zip(arms["pick"], arms["uniform"])]
    gain, ci = paired_ci(diffs)
    print(f"{model} budget {budget:.0%}: gain {gain:+.2f} pp, 95% CI [{ci[0]:+.2f}, "
          f"{ci[1]:+.2f}], pick trial {pick['trial']} ({pick['baseline'] or 'sampled'}), search "
          f"{search_s:.0f} s", flush=True)
    return {"gain_pp": gain, "ci95_pp": list(ci), "diffs_pp": diffs,
            "pick_test_acc": arms["pick"], "uniform_test_acc": arms["uniform"],
            "pick": {"trial": pick["trial"], "baseline": pick["baseline"],
                     "flops_fraction": pick["flops"] / limits["flops"],
                     "quick_score": pick["accuracy"], "channels": pick["channels"]},
            "uniform": {"trial": uni["trial"], "flops_fraction": uni["flops"] / limits["flops"],
                        "quick_score": uni["accuracy"]},
            "pick_is_uniform": pick["trial"] == uni["trial"],
            "quick_score_best": max(r["accuracy"] for r in records),
            "trials_at_budget": sum(r["flops"] >= 0.95 * limits["flops"] for r in records),
            "refine": refined, "search_seconds": search_s,
            "dense_test_acc": evaluate(base, data, data.test)}


def search_vs_uniform(quick: bool, cifar_root: str, ckpt: str,
                      partial: Callable[[dict], Any] | None = None, full: bool = False) -> dict:
    """The search's pick against uniform width at 30/50/70% FLOPs, identical final fine-tune,
    paired over seeds: mean gain and its 95% interval per budget, and the search's wall time.
    ``full``: the confirmation at 50% on all 45k training images with the 5-epoch recipe."""
    from prunetune.search import DEFAULT_PRIORS, RefineSettings

    torch.set_num_threads(2)
    if quick:
        per_class, trials, epochs, seeds, budgets = 40, 6, 1, (0, 1), (0.5,)
        refine = RefineSettings(top=2, steps=(10,))
        score = ScoreConfig(bn_batches=2, steps=4, batch_size=32, report_every=4)
    elif full:
        per_class, trials, epochs, seeds, budgets = None, 16, 5, (0, 1, 2), (0.5,)
        refine = RefineSettings()
        score = ScoreConfig(report_every=40)
    else:
        per_class, trials, epochs, seeds, budgets = 500, 16, 3, (0, 1, 2), (0.3, 0.5, 0.7)
        refine = RefineSettings()
        score = ScoreConfig(report_every=40)
    out: dict[str, Any] = {"train_images_per_class": per_class, "trials": trials,
                           "final_epochs": epochs, "final_recipe": final_recipe(epochs),
                           "seeds": list(seeds),
                           "score": score.__dict__, "refine": refine.__dict__,
                           "priors": list(DEFAULT_PRIORS), "budgets": {}}
    for budget in budgets:
        res = pick_vs_uniform(budget, cifar_root, ckpt, per_class=per_class,
                              test_per_class=None if quick or full else 300, trials=trials,
                              epochs=epochs, seeds=seeds, score=score, refine=refine,
                              partial=None if partial is None else
                              lambda arms: partial({**out, "in_progress": arms}))
        out["budgets"][f"{round(budget * 100)}"] = res
        if partial is not None and len(out["budgets"]) < len(budgets):
            partial(out)
    out["goal"] = ("gain >= +5.0 pp at 30% and >= +2.0 pp at 50% FLOPs with the 95% interval "
                   "above 0; search <= 15 min")
    return out


def _ablation_recipe(quick: bool) -> tuple:
    """``search_ablation``'s sizes (also ``sampler_on_dev``'s, which reruns its searches):
    images a class, trials, final epochs, fine-tune seeds, budgets, searches a budget, the
    refinement and the quick score."""
    from prunetune.search import RefineSettings

    if quick:
        return (40, 6, 1, (0,), (0.5,), 2, RefineSettings(top=2, steps=(10,)),
                ScoreConfig(bn_batches=2, steps=4, batch_size=32, report_every=4))
    return (500, 16, 3, (0, 1), (0.3, 0.5), 5, RefineSettings(), ScoreConfig(report_every=40))


# search_ablation's arms that run a search (through the command line's entry point): each
# StudySettings override; "start_points" runs only the start points (as many trials).
SEARCH_ARMS: dict[str, dict[str, Any]] = {
    "start_points": {"sampler": "tpe", "allocation": "structured", "start_points_only": True},
    "random": {"sampler": "random", "allocation": "structured"},
    "default": {},  # StudySettings' own defaults: what the command line runs
    "per_group": {"sampler": "tpe", "allocation": "per-group"},
}
PEER_ARMS = ("sensitivity", "netadapt", "tp_global", "tp_isomorphic")


class Units:
    """A benchmark's finished units (a search, a fine-tune) by key, kept in a gzipped JSON
    file written after each one, so an interrupted run resumes where it stopped."""

    def __init__(self, path: str | None) -> None:
        import gzip
        import json as _json
        import os

        self.path, self.data = path, {}
        if path and os.path.isfile(path):
            with gzip.open(path, "rt") as f:
                self.data = _json.load(f)

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        import gzip
        import json as _json
        import os

        if key not in self.data:
            self.data[key] = make()
            if self.path:
                tmp = self.path + ".tmp"
                with gzip.open(tmp, "wt") as f:
                    _json.dump(self.data, f)
                os.replace(tmp, self.path)
        return self.data[key]


def search_ablation(quick: bool, cifar_root: str, ckpt: str,
                    partial: Callable[[dict], Any] | None = None,
                    units_path: str | None = None, model: str = "mobilenet_v2") -> dict:
    """What each part of the search adds, and how it fares against the peers' allocations. At
    each budget, several independent searches (search ``i``: sampler seed ``i`` and its own
    training subset and validation split, ``seed=i``); per search:

    - ``uniform``: uniform width (trial 0 of every study);
    - ``start_points``: the default start points only (uniform, the sensitivity allocation,
      the cost-aware priors), the refinement picking among them;
    - ``random``: random sampling in the structured space after the same start points;
    - ``default``: the search exactly as the command line runs it (TPE in the structured
      space; the trial count, a FLOPs-only objective and 32x32 input are the benchmark's);
    - ``per_group``: TPE over one keep-ratio per group, the earlier default space;
    - the peers (``bench/peers.py``): ``sensitivity`` (PaddleSlim/fastnas threshold rule),
      ``netadapt`` (greedy FLOPs-per-loss), ``tp_global`` and ``tp_isomorphic``
      (Torch-Pruning), each repaired onto the same budget.

    Every arm's allocation gets the identical final fine-tune under each seed on search
    ``i``'s training images; test accuracy on the **sealed** half of CIFAR-10's test set,
    which no choice of defaults has seen. The unit of comparison is the search: per search,
    the mean over fine-tune seeds of ``default`` minus the arm; mean and t interval over
    searches. Identical allocations share their fine-tunes; every search and fine-tune is kept
    in ``units_path`` (with every trial's record), so a stopped run resumes."""
    import hashlib
    import json as _json

    from prunetune.evaluators import SensitivityConfig, cache_dir, get_sensitivity
    from prunetune.search import DEFAULT_PRIORS, StudySettings

    from peers import peer_allocations

    torch.set_num_threads(2)
    per_class, trials, epochs, seeds, budgets, searches, refine, score = _ablation_recipe(quick)
    units = Units(units_path)
    n_start = 1 + len(DEFAULT_PRIORS)
    arms = {a: {**cfg, "trials": n_start if cfg.get("start_points_only") else trials}
            for a, cfg in SEARCH_ARMS.items()}
    out: dict[str, Any] = {"test_split": "sealed", "model": model,
                           "train_images_per_class": per_class, "trials": trials,
                           "arms": arms, "peers": list(PEER_ARMS), "final_epochs": epochs,
                           "final_recipe": final_recipe(epochs), "seeds": list(seeds),
                           "score": score.__dict__, "refine": refine.__dict__,
                           "sensitivity": SensitivityConfig().__dict__,
                           "priors": list(DEFAULT_PRIORS), "commit": _commit(), "budgets": {}}
    rows_of: dict[float, list[dict]] = {b: [] for b in budgets}
    for i in range(searches):  # search i at every budget, then i + 1: a stopped run has both
        for budget in budgets:
            rows = rows_of[budget]
            data, space, base, limits = cifar(per_class, 0.1, budget, cifar_root, ckpt, seed=i,
                                              test_half="sealed", model=model)
            tag = f"{model}/{round(budget * 100)}/{i}"

            def test_accs(channels: dict) -> list[float]:
                h = hashlib.sha256(_json.dumps(channels, sort_keys=True).encode()).hexdigest()
                return [units.get(f"finetune/{model}/{i}/{h[:16]}/{s}",
                                  lambda s=s: final_acc(channels, data, space, base, epochs, s))
                        for s in seeds]

            row: dict[str, Any] = {"search": i, "test_images": len(data.test), "arms": {}}
            for arm, cfg in arms.items():
                settings = {k: v for k, v in cfg.items() if k != "start_points_only"}

                def run_arm() -> dict:
                    pick, records, refined, secs = search_pick(
                        budget, cifar_root, ckpt, per_class=per_class, test_per_class=None,
                        score=score, refine=refine, model=model, study=StudySettings(
                            workers=2, seed=i, objectives=("accuracy", "flops"), **settings))
                    return {"pick": _pick_row(pick, limits), "records": records,
                            "refine": refined, "search_seconds": secs}

                found = units.get(f"search/{tag}/{arm}", run_arm)
                records = found["records"]
                if arm == "start_points":
                    uni = next(r for r in records if r["baseline"] == "uniform")
                    row["arms"]["uniform"] = {"pick": _pick_row(uni, limits),
                                              "test_acc": test_accs(uni["channels"])}
                    row["best_start_quick_score"] = max(r["accuracy"] for r in records)
                at_budget = [r for r in records if not r["baseline"]
                             and r["flops"] >= 0.95 * limits["flops"]]
                row["arms"][arm] = {
                    "pick": found["pick"], "test_acc": test_accs(found["pick"]["channels"]),
                    "search_seconds": found["search_seconds"], "refine": found["refine"],
                    "best_sampled_quick_score": max((r["accuracy"] for r in at_budget),
                                                    default=None),
                    "sampled_at_budget": len(at_budget),
                    "sampled_at_or_above_best_start": None if not at_budget else sum(
                        r["accuracy"] >= row["best_start_quick_score"] for r in at_budget)
                    / len(at_budget)}
                _say(budget, i, arm, row["arms"][arm])
            sens = get_sensitivity(base, space, data, folder=cache_dir(), log=lambda m: None)
            peers = units.get(f"peers/{tag}", lambda: {
                name: {"raw": raw, "info": info}
                for name, (raw, info) in peer_allocations(base, space, sens, limits).items()})
            for name, found in peers.items():
                pol = onto_budget(space, name, found["raw"], limits)
                ch = space.channels(pol)
                row["arms"][name] = {"pick": {"channels": ch, "flops_fraction": policy_cost(
                    space, pol, 32).flops / limits["flops"]}, "info": found["info"],
                    "test_acc": test_accs(ch)}
                _say(budget, i, name, row["arms"][name])
            rows.append(row)
            out["budgets"][f"{round(budget * 100)}"] = _ablation_summary(rows)
            if partial is not None:
                partial(out)
    out["goal"] = ("default - best start point >= +1.0 pp at 30% (interval above 0) and >= 0 "
                   "at 50%; default - best peer >= +1.0 pp at both (interval above 0); "
                   "default - uniform >= +3 pp at 30% and >= +2 pp at 50% (interval above 0); "
                   "sampled_at_or_above_best_start >= 0.25")
    return out


def _say(budget: float, i: int, arm: str, res: dict) -> None:
    pick = res["pick"]
    what = (f"pick trial {pick['trial']} ({pick['baseline'] or 'sampled'})"
            if "trial" in pick else "peer allocation")
    print(f"budget {budget:.0%} search {i} {arm}: {what}, test "
          f"{[round(100 * a, 2) for a in res['test_acc']]}", flush=True)


def _commit() -> str | None:
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no",
                            "--", ".", ":!bench/results"],  # results written by runs: not code
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() + ("+uncommitted" if dirty else "")) if r.returncode == 0 else None


def sampler_on_dev(quick: bool, cifar_root: str, ckpt: str,
                   partial: Callable[[dict], Any] | None = None,
                   ablation: str | None = None, sampler: str = "local",
                   first: int = 0, count: int | None = None) -> dict:
    """A candidate sampler measured on the **dev** test half before it may become a default:
    for each budget and search of ``search_ablation`` (same seeds, data splits, trial count
    and refinement), a search with ``sampler``; its pick, the start-points arm's and the
    default (TPE) arm's picks (channels read from ``ablation``) each fine-tuned identically
    under 2 seeds, tested on dev. Differences per search, interval over searches. Searches
    from ``first`` on that ``ablation`` does not hold run their start-points and default arms
    here too (same settings as ``search_ablation``)."""
    import json as _json

    from prunetune.search import DEFAULT_PRIORS, StudySettings

    torch.set_num_threads(2)
    per_class, trials, epochs, seeds, budgets, searches, refine, score = _ablation_recipe(quick)
    searches = count or searches
    previous = None
    if not quick:
        with open(ablation) as f:
            previous = _json.load(f)["results"]["budgets"]
    out: dict[str, Any] = {"test_split": "dev", "sampler": sampler, "trials": trials,
                           "train_images_per_class": per_class, "final_epochs": epochs,
                           "seeds": list(seeds), "budgets": {}}
    for budget in budgets:
        rows = []
        for i in range(first, first + searches):
            data, space, base, limits = cifar(per_class, 0.1, budget, cifar_root, ckpt, seed=i,
                                              test_half="dev")

            def search(arm_sampler: str, n: int) -> tuple:
                return search_pick(budget, cifar_root, ckpt, per_class=per_class,
                                   test_per_class=None, score=score, refine=refine,
                                   study=StudySettings(
                                       trials=n, workers=2, sampler=arm_sampler, seed=i,
                                       objectives=("accuracy", "flops"),
                                       allocation="per-group" if arm_sampler == "local"
                                       else "structured"))

            pick, records, refined, secs = search(sampler, trials)
            arms = {sampler: pick["channels"]}
            held = (previous or {}).get(f"{round(budget * 100)}", {}).get("searches", [])
            if i < len(held):
                arms.update({a: held[i]["arms"][a]["pick"]["channels"]
                             for a in ("start_points", "default")})
            elif not quick:
                arms["start_points"] = search("tpe", 1 + len(DEFAULT_PRIORS))[0]["channels"]
                arms["default"] = search("tpe", trials)[0]["channels"]
            tuned: dict[str, list[float]] = {}
            accs = {}
            for arm, ch in arms.items():
                key = _json.dumps(ch, sort_keys=True)
                if key not in tuned:
                    tuned[key] = [final_acc(ch, data, space, base, epochs, s) for s in seeds]
                accs[arm] = tuned[key]
            rows.append({"search": i, "pick": _pick_row(pick, limits), "search_seconds": secs,
                         "test_acc": accs, "refine": refined})
            print(f"budget {budget:.0%} search {i} {sampler}: pick trial {pick['trial']} "
                  f"({pick['baseline'] or 'sampled'}); dev test "
                  f"{ {a: [round(100 * x, 2) for x in v] for a, v in accs.items()} }", flush=True)
            summary: dict[str, Any] = {"n_searches": len(rows), "searches": rows}
            mean = lambda r, a: statistics.fmean(r["test_acc"][a])
            for a, b in ((sampler, "start_points"), (sampler, "default"),
                         ("default", "start_points")):
                if all(a in r["test_acc"] and b in r["test_acc"] for r in rows):
                    diffs = [100 * (mean(r, a) - mean(r, b)) for r in rows]
                    gain, ci = paired_ci(diffs)
                    summary[f"{a}_minus_{b}"] = {"gain_pp": gain, "ci95_pp": list(ci),
                                                 "per_search_pp": diffs}
            out["budgets"][f"{round(budget * 100)}"] = summary
            if partial is not None:
                partial(out)
    return out


def _pick_row(r: dict, limits: dict) -> dict:
    return {"trial": r["trial"], "baseline": r["baseline"], "quick_score": r["accuracy"],
            "flops_fraction": r["flops"] / limits["flops"], "channels": r["channels"]}


def _ablation_summary(rows: list[dict]) -> dict:
    """Per search, the mean over fine-tune seeds of ``default`` minus each other arm (pp);
    the mean and its 95% t interval over searches. The best peer is the peer arm with the
    highest mean test accuracy over the searches."""
    def mean(arm: str, row: dict) -> float:
        return statistics.fmean(row["arms"][arm]["test_acc"])

    def versus(a: str, b: str) -> dict:
        diffs = [100 * (mean(a, r) - mean(b, r)) for r in rows]
        gain, ci = paired_ci(diffs)
        return {"gain_pp": gain, "ci95_pp": list(ci), "per_search_pp": diffs}

    arms = list(rows[0]["arms"])
    peers = [a for a in arms if a in PEER_ARMS]
    out: dict[str, Any] = {"n_searches": len(rows), "searches": rows}
    for name, arm in (("vs_uniform", "uniform"), ("vs_best_start_point", "start_points"),
                      ("vs_random_search", "random"), ("vs_per_group", "per_group")):
        out[name] = versus("default", arm)
    best = max(peers, key=lambda a: statistics.fmean(mean(a, r) for r in rows))
    out["vs_best_peer"] = {**versus("default", best), "peer": best}
    out["peers"] = {a: versus(a, "uniform") for a in peers}
    out["start_points_vs_uniform"] = versus("start_points", "uniform")
    shares = [r["arms"]["default"]["sampled_at_or_above_best_start"] for r in rows
              if r["arms"]["default"]["sampled_at_or_above_best_start"] is not None]
    out["sampled_at_or_above_best_start"] = statistics.median(shares) if shares else None
    out["mean_test_acc"] = {a: statistics.fmean(mean(a, r) for r in rows) for a in arms}
    return out


def gain_vs_epochs(quick: bool, cifar_root: str, ckpt: str,
                   partial: Callable[[dict], Any] | None = None,
                   ablation: str | None = None) -> dict:
    """Does the pick's gain over uniform width survive a fine-tune that converges? One search's
    pick at 50% FLOPs (the default arm of ``search_ablation``'s search 0, read from
    ``ablation``) and uniform width, each fine-tuned 3, 10 and 30 epochs (4,500 images) under
    2 seeds; test accuracy on the **dev** half (a finding that may steer the default recipe)."""
    import json as _json
    import os

    torch.set_num_threads(2)
    per_class, epochs, seeds = (40, (1, 2), (0,)) if quick else (500, (3, 10, 30), (0, 1))
    budget = 0.5
    data, space, base, limits = cifar(per_class, 0.1, budget, cifar_root, ckpt, seed=0,
                                      test_half="dev")
    if quick or ablation is None:  # the start point the searches pick most often at 50%
        from prunetune.search import cost_aware, marginal_costs

        pick = space.channels(onto_budget(space, "cost", cost_aware(
            space, marginal_costs(space, "flops", 32), -0.5), limits))
        source = "start point cost:-0.5 repaired onto the budget"
    else:
        with open(ablation) as f:
            row = _json.load(f)["results"]["budgets"]["50"]["searches"][0]["arms"]["default"]
        pick = row["pick"]["channels"]
        source = f"{os.path.basename(ablation)}: 50%, search 0, default arm"
    uni = space.channels(onto_budget(space, "uniform", space.uniform(space.high), limits))
    out: dict[str, Any] = {"test_split": "dev", "test_images": len(data.test),
                           "train_images_per_class": per_class, "budget": budget,
                           "pick_source": source, "seeds": list(seeds), "epochs": {}}
    for ep in epochs:
        accs = {arm: [final_acc(ch, data, space, base, ep, s) for s in seeds]
                for arm, ch in (("pick", pick), ("uniform", uni))}
        gain, ci = paired_ci([100 * (a - b) for a, b in zip(accs["pick"], accs["uniform"])])
        out["epochs"][str(ep)] = {"test_acc": accs, "gain_pp": gain, "ci95_pp": list(ci),
                                  "final_recipe": final_recipe(ep)}
        print(f"{ep} epochs: pick {accs['pick']} uniform {accs['uniform']} gain {gain:+.2f} pp",
              flush=True)
        if partial is not None:
            partial(out)
    return out


def spaces_vs_uniform(quick: bool, cifar_root: str,
                      partial: Callable[[dict], Any] | None = None,
                      models: tuple[str, ...] = ("resnet18", "mobilenet_v3_large"),
                      budget: float = 0.5) -> dict:
    """Each newer space's reduced recipe: a dense base trained here from scratch on the
    4,500-image CIFAR-10 subset (no trained base of these ships; cached like the command
    line's), then one search at ``budget`` × the dense FLOPs and its pick against uniform
    width, identical 3-epoch fine-tune, 3 paired seeds."""
    from prunetune.evaluators import get_base_model
    from prunetune.search import RefineSettings

    torch.set_num_threads(2)
    if quick:
        per_class, base_epochs, trials, epochs, seeds = 40, 1, 6, 1, (0, 1)
        refine = RefineSettings(top=2, steps=(10,))
        score = ScoreConfig(bn_batches=2, steps=4, batch_size=32, report_every=4)
        models = models[:1]
    else:
        per_class, base_epochs, trials, epochs, seeds = 500, 30, 16, 3, (0, 1, 2)
        refine, score = RefineSettings(), ScoreConfig(report_every=40)
    test_per_class = None if quick else 300
    out: dict[str, Any] = {"train_images_per_class": per_class, "base_epochs": base_epochs,
                           "trials": trials, "budget": budget, "final_epochs": epochs,
                           "final_recipe": final_recipe(epochs), "seeds": list(seeds),
                           "score": score.__dict__, "refine": refine.__dict__, "models": {}}
    for model in models:
        data = load_data(cifar_root, per_class=per_class, val_fraction=0.1, seed=0,
                         test_per_class=test_per_class)
        space = get_space(model, num_classes=10)
        t0 = time.perf_counter()
        base, source = get_base_model(space, data, epochs=base_epochs, seed=0,
                                      log=lambda m: print(f"{model} {m.strip()}", flush=True))
        base_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            ckpt = f"{d}/{model}.pt"
            torch.save(base.state_dict(), ckpt)
            res = pick_vs_uniform(budget, cifar_root, ckpt, per_class=per_class,
                                  test_per_class=test_per_class, trials=trials, epochs=epochs,
                                  seeds=seeds, score=score, refine=refine, model=model)
        out["models"][model] = {**res, "base_seconds": base_s, "base": source}
        if partial is not None and len(out["models"]) < len(models):
            partial(out)
    return out


def families_at_budget(quick: bool, cifar_root: str, ckpt: str,
                       partial: Callable[[dict], Any] | None = None) -> dict:
    """Fixed allocation families against uniform width, each repaired onto the budget and given
    the identical final fine-tune, paired over seeds: is there room a start point can take?"""
    from prunetune.search import cost_aware, depth_ramp, marginal_costs

    torch.set_num_threads(2)
    per_class, epochs, seeds, budgets = (40, 1, (0, 1), (0.5,)) if quick else \
        (500, 3, (0, 1), (0.3, 0.5))
    out: dict[str, Any] = {"train_images_per_class": per_class, "final_epochs": epochs,
                           "final_recipe": final_recipe(epochs), "seeds": list(seeds),
                           "budgets": {}}
    for budget in budgets:
        data, space, base, limits = cifar(per_class, 0.1, budget, cifar_root, ckpt,
                                          test_per_class=None if quick else 300)
        costs = marginal_costs(space, "flops", 32)
        raws = {"uniform": space.uniform(space.high), "ramp_1": depth_ramp(space, 1.0),
                "ramp_-1": depth_ramp(space, -1.0), "cost_0.5": cost_aware(space, costs, 0.5),
                "cost_-0.5": cost_aware(space, costs, -0.5),
                "cost_-1": cost_aware(space, costs, -1.0)}
        rows: dict[str, Any] = {}
        for name, raw in raws.items():
            pol = onto_budget(space, name, raw, limits)
            ch = space.channels(pol)
            t0 = time.perf_counter()
            accs = [final_acc(ch, data, space, base, epochs, s) for s in seeds]
            rows[name] = {"test_acc": accs, "channels": ch, "seconds": time.perf_counter() - t0,
                          "budget_fraction": policy_cost(space, pol, 32).flops / limits["flops"]}
            if name != "uniform":
                gain, ci = paired_ci([100 * (a - b) for a, b in
                                      zip(accs, rows["uniform"]["test_acc"])])
                rows[name].update(gain_pp=gain, ci95_pp=list(ci))
            print(f"budget {budget:.0%} {name}: test acc {[round(100 * a, 2) for a in accs]} "
                  f"gain {rows[name].get('gain_pp', 0.0):+.2f} pp "
                  f"({rows[name]['seconds']:.0f} s)", flush=True)
            out["budgets"][f"{round(budget * 100)}"] = rows
            if partial is not None:
                partial(out)
    return out


def importance_at_budget(quick: bool, cifar_root: str, ckpt: str,
                         partial: Callable[[dict], Any] | None = None) -> dict:
    """L1 magnitude against first-order Taylor as the criterion that picks which channels a
    group keeps, for uniform width and the default start point (cost-aware alpha -0.5) at 30%
    FLOPs: the identical final fine-tune under each criterion, paired over seeds."""
    from prunetune.search import cost_aware, marginal_costs

    torch.set_num_threads(2)
    per_class, epochs, seeds, budget = (20, 1, (0, 1), 0.5) if quick else (500, 3, (0, 1, 2), 0.3)
    data, space, base, limits = cifar(per_class, 0.1, budget, cifar_root, ckpt,
                                      test_per_class=None if quick else 300)
    raws = {"uniform": space.uniform(space.high),
            "cost_-0.5": cost_aware(space, marginal_costs(space, "flops", 32), -0.5)}
    out: dict[str, Any] = {"budget": f"{budget:.0%}-FLOPs at 32x32",
                           "train_images_per_class": per_class, "final_epochs": epochs,
                           "final_recipe": final_recipe(epochs), "seeds": list(seeds),
                           "taylor_batches": 8, "allocations": {}}
    for name, raw in raws.items():
        ch = space.channels(onto_budget(space, name, raw, limits))
        accs = {imp: [final_acc(ch, data, space, base, epochs, s, imp) for s in seeds]
                for imp in ("l1", "taylor")}
        gain, ci = paired_ci([100 * (t - l) for t, l in zip(accs["taylor"], accs["l1"])])
        out["allocations"][name] = {"test_acc": accs, "taylor_minus_l1_pp": gain,
                                    "ci95_pp": list(ci)}
        print(f"{name}: l1 {accs['l1']} taylor {accs['taylor']} -> taylor - l1 {gain:+.2f} pp "
              f"[{ci[0]:+.2f}, {ci[1]:+.2f}]", flush=True)
        if partial is not None:
            partial(out)
    return out


def latency_vs_uniform(quick: bool, cifar_root: str, ckpt: str,
                       partial: Callable[[dict], Any] | None = None,
                       budget: float = 0.5, runtime: str = "torch") -> dict:
    """The search under a latency budget (``budget`` × the dense network's latency at 224×224,
    1 thread, in ``runtime``, through the command line's entry point: table predicted,
    anchored, pick measured) against uniform width at the same *measured* latency: the widest
    uniform width that times no slower than the pick twice in a row, each width timed in
    alternation with the pick, then the identical final fine-tune for both, paired over seeds.
    Both networks' latency is also measured in both runtimes, as fractions of the dense one's.
    Accuracy is scored at CIFAR-10's 32×32, latency at the 224×224 deployment input (the
    command's proxy setting)."""
    import json
    import os

    from prunetune.evaluators import LatencyRatio, channels_cost
    from prunetune.pipeline import SearchJob, run_search
    from prunetune.search import RefineSettings, StudySettings, parse_budget

    torch.set_num_threads(2)
    if quick:
        per_class, trials, epochs, seeds, size = 40, 4, 1, (0, 1), 64
        refine = RefineSettings(top=2, steps=(10,))
        score = ScoreConfig(bn_batches=2, steps=4, batch_size=32, report_every=4)
        budget = 0.9  # at 64×64 the smallest network takes ~65% of the dense one's time
    else:
        per_class, trials, epochs, seeds, size = 500, 16, 3, (0, 1, 2), 224
        refine, score = RefineSettings(), ScoreConfig(report_every=40)
    test_per_class = None if quick else 300
    data, space, base, _ = cifar(per_class, 0.1, budget, cifar_root, ckpt,
                                 test_per_class=test_per_class)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        summary = run_search(SearchJob(
            budgets=[parse_budget(f"{round(budget * 100)}%-latency")], out=d,
            study=StudySettings(trials=trials, workers=2, objectives=("accuracy", "latency")),
            score=score, refine=refine, data=cifar_root, per_class=per_class,
            test_per_class=test_per_class, checkpoint=ckpt, input_size=size,
            latency="predict", latency_threads=1, latency_runtime=runtime, cpus=2, final_top=1,
            final_baseline=False,
            finetune=FinetuneConfig(epochs=0), export=False),
            log=lambda m: print(m, flush=True) if m.startswith(("latency", "measured")) else None)
        with open(os.path.join(d, "latency_pick.json")) as f:
            timed = json.load(f)
    search_s = time.perf_counter() - t0
    pick = next(r for r in summary["records"] if r["trial"] == summary["pick"])

    pick_net = prune_to_channels(base, space, pick["channels"], importance=None)
    to_pick = LatencyRatio(pick_net, size, runtime=runtime)
    widths = []
    for ratio in sorted(space.ratio_choices(), reverse=True):
        ch = space.channels(space.uniform(ratio))
        net = prune_to_channels(base, space, ch, importance=None)
        # Timed in alternation with the pick: the machine's drift moves both alike; a width
        # that times within is timed again (one fluke stopped an earlier run three widths early).
        times = [to_pick(net)]
        if times[0] <= 1.0:
            times.append(to_pick(net))
        widths.append({"ratio": ratio, "uniform_over_pick": times})
        if max(times) <= 1.0:
            break
    uni = space.channels(space.uniform(widths[-1]["ratio"]))
    uni_net = prune_to_channels(base, space, uni, importance=None)
    of_dense = {}
    for rt in ("torch", "onnxruntime"):
        to_dense = LatencyRatio(base, size, runtime=rt)
        of_dense[rt] = {arm: to_dense(net)
                        for arm, net in (("pick", pick_net), ("uniform", uni_net))}
    arms: dict[str, list] = {"pick": [], "uniform": []}
    for s in seeds:
        arms["pick"].append(final_acc(pick["channels"], data, space, base, epochs, s))
        arms["uniform"].append(final_acc(uni, data, space, base, epochs, s))
        print(f"seed {s}: pick {arms['pick'][-1]:.4f}, uniform {arms['uniform'][-1]:.4f}",
              flush=True)
    diffs = [100 * (a - b) for a, b in zip(arms["pick"], arms["uniform"])]
    gain, ci = paired_ci(diffs)
    dense = policy_cost(space, space.uniform(1.0), size).flops
    print(f"latency budget {budget:.0%}: gain {gain:+.2f} pp, 95% CI [{ci[0]:+.2f}, "
          f"{ci[1]:+.2f}]; pick trial {pick['trial']}, uniform ratio {widths[-1]['ratio']}",
          flush=True)
    return {"budget": budget, "runtime": runtime, "input_size": size, "threads": 1,
            "latency_of_dense": of_dense, "train_images_per_class":
            per_class, "trials": trials, "final_epochs": epochs,
            "final_recipe": final_recipe(epochs), "seeds": list(seeds),
            "gain_pp": gain, "ci95_pp": list(ci), "diffs_pp": diffs,
            "pick_test_acc": arms["pick"], "uniform_test_acc": arms["uniform"],
            "limit_ms": timed["limit_ms"], "measured_pick": timed["rows"],
            "pick": {"trial": pick["trial"], "baseline": pick["baseline"],
                     "measured_ms": pick["latency_ms"], "channels": pick["channels"],
                     "flops_kept": channels_cost(space, pick["channels"], size).flops / dense},
            "uniform": {"ratio": widths[-1]["ratio"],
                        "flops_kept": channels_cost(space, uni, size).flops / dense},
            "uniform_widths_timed": widths, "search_seconds": search_s,
            "dense_test_acc": evaluate(base, data, data.test),
            "goal": "gain > 0 with the 95% interval above 0 at the same measured latency"}



def sensitivity_rules_on_dev(quick: bool, cifar_root: str, ckpt: str,
                             partial: Callable[[dict], Any] | None = None,
                             units_path: str | None = None) -> dict:
    """Which rule makes the sensitivity start point, chosen on the **dev** half: for the data
    of ``search_ablation``'s searches 0-2 (same seeds and splits, the same cached
    measurement), the threshold rule (PaddleSlim, fastnas) and the greedy FLOPs-per-loss rule
    (NetAdapt), each on the accuracy drops and on the KL drops, repaired onto the budget,
    fine-tuned identically under 2 seeds at 30% and 50% FLOPs. Differences per search,
    interval over searches."""
    import hashlib
    import json as _json

    from prunetune.evaluators import cache_dir, get_sensitivity
    from prunetune.search import sensitivity_allocation

    torch.set_num_threads(2)
    per_class, _, epochs, seeds, budgets, _, _, _ = _ablation_recipe(quick)
    searches = 1 if quick else 3
    units = Units(units_path)
    rules = [(r, m) for r in ("threshold", "greedy") for m in ("accuracy", "kl")]
    out: dict[str, Any] = {"test_split": "dev", "train_images_per_class": per_class,
                           "final_epochs": epochs, "final_recipe": final_recipe(epochs),
                           "seeds": list(seeds), "commit": _commit(), "budgets": {}}
    for budget in budgets:
        rows = []
        for i in range(searches):
            data, space, base, limits = cifar(per_class, 0.1, budget, cifar_root, ckpt, seed=i,
                                              test_half="dev")
            sens = get_sensitivity(base, space, data, folder=cache_dir(), log=print)
            accs = {}
            for rule, measure in rules:
                raw = sensitivity_allocation(space, sens, limits, 32, rule=rule,
                                             measure=measure)
                ch = space.channels(onto_budget(space, rule, raw, limits))
                h = hashlib.sha256(_json.dumps(ch, sort_keys=True).encode()).hexdigest()[:16]
                accs[f"{rule}_{measure}"] = [units.get(
                    f"dev/{i}/{h}/{s}", lambda s=s, ch=ch: final_acc(ch, data, space, base,
                                                                     epochs, s))
                    for s in seeds]
                print(f"budget {budget:.0%} search {i} {rule} {measure}: "
                      f"{[round(100 * a, 2) for a in accs[f'{rule}_{measure}']]}", flush=True)
            rows.append({"search": i, "test_acc": accs})
        summary: dict[str, Any] = {"searches": rows}
        for name in rows[0]["test_acc"]:
            if name != "threshold_accuracy":
                diffs = [100 * (statistics.fmean(r["test_acc"][name])
                                - statistics.fmean(r["test_acc"]["threshold_accuracy"]))
                         for r in rows]
                gain, ci = paired_ci(diffs)
                summary[f"{name}_minus_threshold_accuracy"] = {
                    "gain_pp": gain, "ci95_pp": list(ci), "per_search_pp": diffs}
        out["budgets"][f"{round(budget * 100)}"] = summary
        if partial is not None:
            partial(out)
    return out
