"""prunetune benchmarks. Run one by name; results go to bench/results/<name>.json.

    python bench/run.py prune_speed            # issue: foundation
    python bench/run.py score_throughput       # issue: evaluator
    python bench/run.py engine_overhead        # issue: search
    python bench/run.py latency                # issue: latency
    python bench/run.py latency_fit            # issue: latency in the runtime (table error)
    python bench/run.py latency_fit_onnxruntime  # the same in onnxruntime (also *_2t: 2 threads)
    python bench/run.py search_ablation        # the search against its parts and the peers
    python bench/run.py gain_vs_epochs         # (after search_ablation) gain vs fine-tune length
    python bench/run.py sampler_on_dev         # (after search_ablation) local search, dev half
    python bench/run.py soak                   # issue 24: faults in a 300-trial study (bench/soak.py)
    python bench/run.py NAME --quick           # a small smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.environ.get("PRUNETUNE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
CIFAR = os.path.join(SHARED, "data", "cifar10")
BASE_CKPT = os.path.join(SHARED, "models", "mobilenet_v2_cifar10.pt")

import torch  # noqa: E402

from prunetune.evaluators import (CandidateEvaluator, ScoreConfig, adaptive_bn,  # noqa: E402
                                  evaluate, load_data, load_into, policy_cost, prune,
                                  read_state_dict, score_candidate, train_steps)
from prunetune.spaces import get_space  # noqa: E402


# The search these benchmarks measured when they were written (per-group keep-ratios, the
# cost-aware start points, no sensitivity pass): they keep measuring it.
BEFORE_STRUCTURED: dict[str, Any] = {"allocation": "per-group",
                                     "priors": ("cost:-0.25", "cost:-0.5", "cost:-1")}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def _median_time(fn: Callable[[], Any], n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def prune_speed(quick: bool) -> dict:
    """Per space (width 1.0, 1000 classes, 224x224): time to analyse the network once (trace +
    dependency graph), to prune it from a policy, and to cost a policy analytically."""
    from prunetune.spaces import list_spaces
    from prunetune.spaces._base import _NETWORKS

    torch.set_num_threads(2)
    out: dict[str, Any] = {"goal": "prune <= 0.3 s (MobileNetV2), analytic cost <= 1 ms",
                           "setting": "width 1.0, 1000 classes, policies costed at 224x224"}
    for name in list_spaces():
        space = get_space(name)
        _NETWORKS.clear()
        t0 = time.perf_counter()
        space.network
        analyse_s = time.perf_counter() - t0
        base = space.build_model()
        rng = random.Random(0)
        pols = [{n: rng.choice(space.ratio_choices()) for n in space.group_names}
                for _ in range(3 if quick else 20)]
        prune_s = [_median_time(lambda p=p: prune(base, space, p, input_size=224), 1)
                   for p in pols]
        it = iter(range(10**9))
        cost_s = _median_time(lambda: policy_cost(space, pols[next(it) % len(pols)], 224),
                              100 if quick else 2000)
        out[name] = {"groups": len(space.group_names), "layers": len(space.network.layers),
                     "analyse_s": analyse_s, "prune_median_s": statistics.median(prune_s),
                     "prune_max_s": max(prune_s), "policies": len(pols),
                     "analytic_cost_median_ms": cost_s * 1000}
    return out


def score_throughput(quick: bool) -> dict:
    """Images/s of BN recalibration, fine-tune steps and evaluation: prunetune vs a bare loop."""
    torch.set_num_threads(2)
    data = load_data(CIFAR, per_class=100 if quick else 500, test_per_class=10)
    space = get_space("mobilenet_v2", num_classes=10)
    base = space.build_model()
    load_into(base, read_state_dict(BASE_CKPT), BASE_CKPT, space.head)
    model = prune(base, space, space.uniform(0.5)).to(memory_format=torch.channels_last)
    bs, n = 64, 4 if quick else 20
    gen = torch.Generator().manual_seed(0)
    x, y = next(data.batches(data.train, bs, train=True, gen=gen))
    out: dict[str, Any] = {"batch_size": bs, "batches": n, "model": "mobilenet_v2 x1.0 pruned "
                           "to uniform 0.5, 32x32, channels_last, 2 threads"}

    def bare_bn():
        model.train()
        with torch.no_grad():
            for _ in range(n):
                model(x)

    def bare_train():
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def bare_eval():
        model.eval()
        with torch.inference_mode():
            for _ in range(n):
                model(x)

    sub = type(data.val)(data.train.x[: n * bs], data.train.y[: n * bs])
    ours = {"bn": lambda: adaptive_bn(model, data, n, bs, gen),
            "train": lambda: train_steps(model, data, n, lr=0.0, batch_size=bs, gen=gen),
            "eval": lambda: evaluate(model, data, sub, bs)}
    bare = {"bn": bare_bn, "train": bare_train, "eval": bare_eval}
    reps = 2 if quick else 5
    for k in ours:
        bare[k]()  # warm-up
        tb, to = _median_time(bare[k], reps), _median_time(ours[k], reps)
        out[k] = {"bare_img_s": n * bs / tb, "prunetune_img_s": n * bs / to,
                  "overhead": to / tb - 1}
    cfg = ScoreConfig()
    t0 = time.perf_counter()
    res, _ = score_candidate(base, space, data, space.channels(space.uniform(0.5)), cfg)
    out["default_score_seconds"] = time.perf_counter() - t0
    out["default_score_config"] = cfg.__dict__
    out["val_images"] = len(data.val)
    out["goal"] = "overhead <= 10% against the bare loop"
    return out


def engine_overhead(quick: bool) -> dict:
    """Per-trial overhead of Ray Tune + OptunaSearch + SQLite storage vs a plain loop."""
    import tempfile

    from prunetune.search import Problem, StudySettings, init_ray, open_storage, repair, run_study

    n = 6 if quick else 30
    torch.set_num_threads(1)
    data = load_data(None)
    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    base = space.build_model()
    limits = {"flops": 0.5 * policy_cost(space, space.uniform(1.0), 32).flops}
    score = ScoreConfig(bn_batches=1, steps=0, batch_size=32)
    rng = random.Random(0)
    t0 = time.perf_counter()
    for _ in range(n):
        raw = {g: rng.choice(space.ratio_choices()) for g in space.group_names}
        pol, _ = repair(space, raw, limits, 32)
        score_candidate(base, space, data, space.channels(pol), score)
    direct = (time.perf_counter() - t0) / n
    t1 = time.perf_counter()
    init_ray(None, 2, log=lambda m: None)
    ray_start = time.perf_counter() - t1
    out: dict[str, Any] = {"trials": n, "direct_s_per_trial": direct, "ray_init_s": ray_start,
                           "scorer": "width 0.25, adaptive BN 1 batch, no steps, 32x32",
                           "storage": "sqlite (WAL)"}
    def tune_seconds(trials: int, workers: int) -> float:
        with tempfile.TemporaryDirectory() as d:
            problem = Problem(space.name, space.config(), limits, deploy_size=32,
                              threads=2 // workers)
            evaluator = CandidateEvaluator(space.name, space.config(), base.state_dict(), data,
                                           score, deploy_size=32, threads=2 // workers,
                                           latency="off")
            settings = StudySettings(trials=trials, workers=workers,
                                     objectives=("accuracy", "flops"), **BEFORE_STRUCTURED)
            storage = open_storage(f"sqlite:///{d}/s.db")
            t2 = time.perf_counter()
            run_study(problem, settings, storage, evaluator, d, log=lambda m: None)
            return time.perf_counter() - t2

    # Two trial counts separate the per-study fixed cost (Tuner set-up, object store puts)
    # from the marginal cost of one more trial.
    for workers in (1, 2):
        t_n, t_2n = tune_seconds(n, workers), tune_seconds(2 * n, workers)
        per = (t_2n - t_n) / n
        out[f"tune_s_per_trial_{workers}w"] = per
        out[f"tune_fixed_s_{workers}w"] = t_n - n * per
        out[f"throughput_trials_per_min_{workers}w"] = 60 / per
    out["overhead_s_per_trial_1w"] = out["tune_s_per_trial_1w"] - direct
    import resource

    out["driver_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["goal"] = "overhead <= 0.2 s a trial"
    return out


def latency(quick: bool) -> dict:
    """Lookup-table latency: build time, predicted vs measured error, latency vs FLOPs
    reduction, and the effect of channel rounding on measured latency."""
    import tempfile

    from prunetune.evaluators import get_latency_table, measure_latency, prune_to_channels
    from prunetune.search import repair

    size = 224
    space = get_space("mobilenet_v2", num_classes=10)
    base = space.build_model()
    n = 4 if quick else 20
    out: dict[str, Any] = {"input_size": size, "candidates": n,
                           "model": "mobilenet_v2 x1.0, 10 classes"}
    dense_flops = policy_cost(space, space.uniform(1.0), size).flops
    for threads in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            table = get_latency_table(space, size, folder=d, threads=threads, log=lambda m: None)
        rng = random.Random(threads)
        rows = []
        for _ in range(n):
            ch = space.channels({g: rng.choice(space.ratio_choices()) for g in space.group_names})
            net = prune_to_channels(base, space, ch, importance=None)
            meas = measure_latency(net, size, threads=threads, warmup=3, repeats=15).median_ms
            pred = table.predict_channels(space.layers(ch, size))
            rows.append((pred - meas) / meas)
        dense_ms = measure_latency(base, size, threads=threads, warmup=3, repeats=15).median_ms
        # Latency vs FLOPs reduction for allocations repaired onto 30/50/70% of the FLOPs.
        red = []
        for frac in (0.3, 0.5, 0.7):
            for _ in range(2 if quick else 4):
                raw = {g: rng.choice(space.ratio_choices()) for g in space.group_names}
                pol, _ = repair(space, raw, {"flops": frac * dense_flops}, size)
                net = prune_to_channels(base, space, space.channels(pol), importance=None)
                ms = measure_latency(net, size, threads=threads, warmup=3, repeats=15).median_ms
                fl = policy_cost(space, pol, size).flops
                red.append({"flops_kept": fl / dense_flops, "latency_kept": ms / dense_ms,
                            "ratio": (1 - ms / dense_ms) / (1 - fl / dense_flops)})
        out[f"{threads}_threads"] = {
            "table_build_s": table.build_seconds, "fit_scale": table.scale,
            "fit_offset_ms": table.offset_ms,
            "median_abs_error": statistics.median(abs(e) for e in rows),
            "max_abs_error": max(abs(e) for e in rows), "errors": rows,
            "dense_ms": dense_ms,
            "latency_vs_flops_reduction_median": statistics.median(r["ratio"] for r in red),
            "reductions": red}
    # Channel rounding: the same uniform ratios at several round_to values (1 thread).
    rounding = []
    for rt in (1, 4, 8, 16, 32):
        sp = get_space("mobilenet_v2", num_classes=10, round_to=rt)
        for r in (0.35, 0.55, 0.75):
            ch = sp.channels(sp.uniform(r))
            net = prune_to_channels(sp.build_model(), sp, ch, importance=None)
            rounding.append({"round_to": rt, "ratio": r,
                             "flops": policy_cost(sp, sp.uniform(r), size).flops,
                             "ms": measure_latency(net, size, threads=1, warmup=3,
                                                   repeats=7 if quick else 15).median_ms})
    out["rounding"] = rounding
    out["goal"] = ("median |error| <= 5% at 1 and 2 threads; latency falls >= 0.8x as much "
                   "as FLOPs")
    return out


# -- search quality, sample efficiency, score fidelity (CIFAR-10 + the shared dense base) ------
def _cifar(per_class: int | None, val_fraction: float, seed: int = 0):
    from quality import cifar

    return cifar(per_class, val_fraction, 0.5, CIFAR, BASE_CKPT, seed)


def _search(sampler: str, trials: int, seed: int, data, space, base, limits,
            score: ScoreConfig) -> list[dict]:
    import tempfile

    from prunetune.search import (Problem, StudySettings, init_ray, open_storage, run_study,
                                  trial_records)

    init_ray(None, 2, log=lambda m: None)
    with tempfile.TemporaryDirectory() as d:
        problem = Problem(space.name, space.config(), limits, deploy_size=32, threads=1)
        evaluator = CandidateEvaluator(space.name, space.config(), base.state_dict(), data,
                                       score, deploy_size=32, threads=1, latency="off")
        settings = StudySettings(trials=trials, workers=2, sampler=sampler, seed=seed,
                                 objectives=("accuracy", "flops"), **BEFORE_STRUCTURED)
        study = run_study(problem, settings, open_storage(f"sqlite:///{d}/s.db"),
                          evaluator, d, log=lambda m: None)
        recs = trial_records(study)
        for r, t in zip(recs, [t for t in study.trials if t.state.name == "COMPLETE"]):
            r["datetime_complete"] = t.datetime_complete.timestamp()
        return recs


def _final_acc(record: dict, data, space, base, epochs: int, seed: int) -> float:
    from quality import final_acc

    return final_acc(record["channels"], data, space, base, epochs, seed)


def search_quality(quick: bool, full: bool = False) -> dict:
    """Best-under-budget from TPE vs uniform width vs best of random search (same trial
    count), each given the identical final fine-tune, over seeds."""
    torch.set_num_threads(2)
    per_class, trials, epochs = (60, 6, 1) if quick else (1500, 30, 3)
    seeds = (0,) if quick else (0, 1)
    if full:  # all 45k training images and the 5-epoch fine-tune; one seed (~25 min)
        per_class, trials, epochs, seeds = None, 30, 5, (0,)
    score = ScoreConfig(bn_batches=20, steps=40, batch_size=64, lr=0.01, report_every=40)
    out: dict[str, Any] = {"train_images_per_class": per_class, "trials": trials,
                           "final_epochs": epochs, "budget": "50%-FLOPs at 32x32",
                           "score": score.__dict__, "runs": []}
    for seed in seeds:
        data, space, base, limits = _cifar(per_class, 0.1, seed)
        tpe = _search("tpe", trials, seed, data, space, base, limits, score)
        rnd = _search("random", trials, seed, data, space, base, limits, score)
        uni = next(r for r in tpe if r["baseline"] == "uniform")
        best_tpe = max(tpe, key=lambda r: r["accuracy"])
        best_rnd = max((r for r in rnd if r["baseline"] != "uniform"), key=lambda r: r["accuracy"])
        run = {"seed": seed}
        for name, rec in (("search_tpe", best_tpe), ("uniform", uni), ("random_best", best_rnd)):
            run[name] = {"trial": rec["trial"], "flops": rec["flops"], "val_score": rec["accuracy"],
                         "test_acc": _final_acc(rec, data, space, base, epochs, seed)}
        run["dense_test_acc"] = evaluate(base, data, data.test)
        out["runs"].append(run)
        print(json.dumps(run), flush=True)
    for k in ("search_tpe", "uniform", "random_best"):
        accs = [r[k]["test_acc"] for r in out["runs"]]
        out[f"{k}_mean"] = statistics.fmean(accs)
        out[f"{k}_spread"] = max(accs) - min(accs)
    out["gain_vs_uniform_pp"] = 100 * (out["search_tpe_mean"] - out["uniform_mean"])
    out["drop_vs_dense_pp"] = 100 * (out["runs"][0]["dense_test_acc"] - out["search_tpe_mean"])
    out["goal"] = "search >= uniform + 1.0 pp; drop vs dense <= 1.0 pp"
    return out


def sample_efficiency(quick: bool) -> dict:
    """Hypervolume of the (accuracy, FLOPs) front against trials, per sampler (BN-only score)."""
    from prunetune.search import hypervolume_2d

    torch.set_num_threads(2)
    trials = 12 if quick else 100
    data, space, base, limits = _cifar(40 if quick else 300, 0.4 if quick else 0.25, 0)
    score = ScoreConfig(bn_batches=10, steps=0, batch_size=64)
    ref = limits["flops"]
    out: dict[str, Any] = {"trials": trials, "val_images": len(data.val),
                           "score": "adaptive BN only (10 batches)", "hv_reference":
                           "accuracy 0, FLOPs = budget", "curves": {}}
    for sampler in ("tpe", "nsga2", "random"):
        recs = sorted(_search(sampler, trials, 0, data, space, base, limits, score),
                      key=lambda r: r["datetime_complete"])
        curve = []
        for k in range(1, len(recs) + 1):
            pts = [(r["accuracy"], r["flops"] / ref) for r in recs[:k]]
            curve.append(hypervolume_2d(pts, ref_cost=1.0))
        out["curves"][sampler] = curve
        print(sampler, [round(c, 4) for c in curve[::10]], flush=True)
    target = out["curves"]["random"][-1]
    out["trials_to_reach_random_final_hv"] = {
        s: next((i + 1 for i, v in enumerate(c) if v >= target), None)
        for s, c in out["curves"].items()}
    out["goal"] = "default sampler (tpe) reaches random's final hypervolume in <= 30 trials"
    return out


def score_fidelity(quick: bool) -> dict:
    """Kendall tau between quick scores (BN only; BN + K steps) and final test accuracy."""
    from scipy.stats import kendalltau

    from prunetune.search import repair

    torch.set_num_threads(2)
    n, per_class, epochs = (4, 20, 1) if quick else (12, 1000, 2)
    data, space, base, limits = _cifar(per_class, 0.1, 0)
    rng = random.Random(0)
    cfg = (ScoreConfig(bn_batches=2, steps=4, batch_size=32, lr=0.01, report_every=4) if quick
           else ScoreConfig(bn_batches=20, steps=40, batch_size=64, lr=0.01, report_every=40))
    rows = []
    for i in range(n):
        raw = {g: rng.choice(space.ratio_choices()) for g in space.group_names}
        target = 0.3 + 0.7 * i / max(1, n - 1)  # spread over the budget range
        pol, _ = repair(space, raw, limits, 32, target)
        ch = space.channels(pol)
        t0 = time.perf_counter()
        res, _ = score_candidate(base, space, data, ch, cfg)
        score_s = time.perf_counter() - t0
        rec = {"channels": ch}
        rows.append({"flops": policy_cost(space, pol, 32).flops, "bn_score": res.history[0][2],
                     "bn_steps_score": res.accuracy, "score_seconds": score_s,
                     "final_test_acc": _final_acc(rec, data, space, base, epochs, 0)})
        print(json.dumps(rows[-1]), flush=True)
    final = [r["final_test_acc"] for r in rows]
    out = {"candidates": n, "final_epochs": epochs, "train_images_per_class": per_class,
           "score": cfg.__dict__, "rows": rows,
           "tau_bn_only": kendalltau([r["bn_score"] for r in rows], final).statistic,
           "tau_bn_plus_steps": kendalltau([r["bn_steps_score"] for r in rows], final).statistic,
           "goal": "tau >= 0.6 for the default score (BN + 40 steps)"}
    return out


def search_quality_full(quick: bool) -> dict:
    """search_quality on the full training set with a 5-epoch final fine-tune, seed 0."""
    return search_quality(quick, full=not quick)


def score_fidelity_at_budget(quick: bool) -> dict:
    """Kendall tau of each quick-score variant against final accuracy, all candidates at one
    budget (see bench/quality.py)."""
    from quality import score_fidelity_at_budget as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"))


def search_vs_uniform(quick: bool) -> dict:
    """The search's pick vs uniform width at 30/50/70% FLOPs, paired seeds
    (see bench/quality.py)."""
    from quality import search_vs_uniform as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"))


def search_ablation(quick: bool) -> dict:
    """The default search against uniform width, its start points, random search in its
    space, the per-group space and the peers' allocations (sensitivity, NetAdapt, Torch-Pruning
    global and isomorphic), 5 independent searches a budget at 30% and 50% FLOPs, sealed test
    half (see bench/quality.py); every search and fine-tune is kept, with every trial's record,
    in results/search_ablation_units.json.gz, and a stopped run resumes from it."""
    from quality import search_ablation as run

    units = None if quick else os.path.join(ROOT, "bench", "results",
                                            "search_ablation_units.json.gz")
    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"), units_path=units)


def sensitivity_rules_on_dev(quick: bool) -> dict:
    """The sensitivity start point's rule (threshold or NetAdapt's greedy, on accuracy or KL
    drops) chosen on the dev half (see bench/quality.py); fine-tunes kept in
    results/sensitivity_rules_on_dev_units.json.gz."""
    from quality import sensitivity_rules_on_dev as run

    units = None if quick else os.path.join(ROOT, "bench", "results",
                                            "sensitivity_rules_on_dev_units.json.gz")
    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"), units_path=units)


def gain_vs_epochs(quick: bool) -> dict:
    """search_ablation's pick at 50% (search 0, default arm) vs uniform width, fine-tuned 3,
    10 and 30 epochs, 2 seeds, dev test half (see bench/quality.py)."""
    from quality import gain_vs_epochs as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"),
               ablation=os.path.join(ROOT, "bench", "results", "search_ablation.json"))


def sampler_on_dev(quick: bool) -> dict:
    """The local-search sampler on search_ablation's searches, against its start-points and
    default arms, dev test half (see bench/quality.py)."""
    from quality import sampler_on_dev as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"),
               ablation=os.path.join(ROOT, "bench", "results", "search_ablation.json"))


def sampler_on_dev_more(quick: bool) -> dict:
    """sampler_on_dev's searches 3 and 4 (their start-points and TPE arms run here too)."""
    from quality import sampler_on_dev as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"),
               ablation=os.path.join(ROOT, "bench", "results", "search_ablation.json"),
               first=3, count=2)


def search_vs_uniform_full(quick: bool) -> dict:
    """search_vs_uniform at 50% FLOPs on all 45k training images, 5-epoch final fine-tune,
    3 paired seeds, the full 10k test set."""
    from quality import search_vs_uniform as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"), full=not quick)


def spaces_vs_uniform(quick: bool) -> dict:
    """ResNet-18 and MobileNetV3-Large: a base trained here, one search at 50% FLOPs, its pick
    vs uniform width over paired fine-tune seeds (see bench/quality.py)."""
    from quality import spaces_vs_uniform as run

    return run(quick, CIFAR, partial=PARTIAL.get("save"))


def spaces_vs_uniform_30(quick: bool) -> dict:
    """spaces_vs_uniform for ResNet-18 at 30% FLOPs (at 50% its pruned candidates were within
    a point of the dense base)."""
    from quality import spaces_vs_uniform as run

    return run(quick, CIFAR, partial=PARTIAL.get("save"), models=("resnet18",), budget=0.3)


def latency_vs_uniform(quick: bool) -> dict:
    """The search at 50% of the dense latency (224×224, 1 thread) vs uniform width at the same
    measured latency, paired seeds (see bench/quality.py)."""
    from quality import latency_vs_uniform as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"))


def latency_vs_uniform_70(quick: bool) -> dict:
    """latency_vs_uniform at 70% of the dense latency (the issue's example budget)."""
    from quality import latency_vs_uniform as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"), budget=0.7)


def latency_vs_uniform_70_onnxruntime(quick: bool) -> dict:
    """latency_vs_uniform at 70% of the dense latency in onnxruntime (table, budget and
    measured pick all in the deployment runtime)."""
    from quality import latency_vs_uniform as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"), budget=0.7,
               runtime="onnxruntime")


def families_at_budget(quick: bool) -> dict:
    """Uniform width against fixed allocation families at the budget, paired over fine-tune
    seeds (see bench/quality.py)."""
    from quality import families_at_budget as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"))


def importance_at_budget(quick: bool) -> dict:
    """L1 against first-order Taylor channel ranking after the identical fine-tune, paired
    seeds (see bench/quality.py)."""
    from quality import importance_at_budget as run

    return run(quick, CIFAR, BASE_CKPT, partial=PARTIAL.get("save"))


def latency_fit(quick: bool, runtime: str = "torch", threads: int = 1, round_to: int = 8) -> dict:
    """Lookup-table error on the networks a search proposes, per space (width 1.0, 10 classes,
    224x224, ``threads`` threads, in ``runtime``, channels in multiples of ``round_to``): uniform
    widths, random ratios and random allocations repaired onto
    30/50/70% of the FLOPs. Each network's layer sum and its measured latency (least of three
    medians of 15 runs, taken in three turns over all networks) are kept, so any calibration
    can be judged on them: the table as built, the raw layer sum, the table anchored to the
    dense network timed just before (as a run does at its start), and lines fitted on each set.
    Each error is also split into a level (median predicted / measured: how fast the machine
    was while the table was built, against now) and a shape (median |error| once the level is
    divided out: how well the table ranks and spaces the networks). ``ratio_error`` compares
    each network's predicted fraction of the dense network's latency with the fraction measured
    in alternation with it (drift-free; what percentage budgets and the measured pick use)."""
    import tempfile

    from prunetune.evaluators import (LatencyRatio, get_latency_table, measure_latency,
                                      prune_to_channels, quiet_latency_ms)
    from prunetune.search import repair

    size = 224
    out: dict[str, Any] = {"input_size": size, "threads": threads, "runtime": runtime,
                           "round_to": round_to,
                           "goal": "median |error| <= 5% on repaired candidates"}
    for name in (("mobilenet_v2",) if quick else ("mobilenet_v2", "resnet18")):
        space = get_space(name, num_classes=10, round_to=round_to)
        base = space.build_model()
        with tempfile.TemporaryDirectory() as d:
            table = get_latency_table(space, size, folder=d, threads=threads,
                                      runtime=runtime, log=lambda m: None)
        rng = random.Random(0)
        dense = policy_cost(space, space.uniform(1.0), size).flops
        sets: dict[str, list] = {
            "uniform": [space.uniform(r) for r in (0.3, 0.5, 0.7, 1.0)],
            "random": [{g: rng.choice(space.ratio_choices()) for g in space.group_names}
                       for _ in range(2 if quick else 8)],
            "repaired": [repair(space, {g: rng.choice(space.ratio_choices())
                                        for g in space.group_names},
                                {"flops": f * dense}, size)[0]
                         for f in (0.3, 0.5, 0.7) for _ in range(1 if quick else 4)]}
        rows = [{"set": kind, "policy": pol} for kind, pols in sets.items() for pol in pols]
        nets = [prune_to_channels(base, space, space.channels(r["policy"]), importance=None)
                for r in rows]
        # What a run does at its start: time the dense network now and scale the table to it
        # (LatencyTable.anchor; the runs of 2026-11-30 10:58-11:48 scaled only down).
        anchor_ms = quiet_latency_ms(base, size, threads=threads, runtime=runtime)
        dense_pred = table.predict(space, space.uniform(1.0))
        factor = anchor_ms / dense_pred
        # Each network timed in alternation with the dense one (latency_ratio): the machine's
        # drift moves both alike, so this judges the table's shape alone, as a %-budget and
        # the measured pick use it.
        to_dense = LatencyRatio(base, size, threads=threads, runtime=runtime)
        ratios = [to_dense(net) for net in nets]
        # Three turns over all networks, each keeping its least median: a slow spell of the
        # machine costs one turn of a few networks, not every timing of one.
        turns = [[measure_latency(net, size, threads=threads, warmup=3, repeats=15,
                                  runtime=runtime).median_ms for net in nets] for _ in range(3)]
        for r, ms, ratio in zip(rows, zip(*turns), ratios):
            pol = r.pop("policy")
            r.update(flops_kept=policy_cost(space, pol, size).flops / dense,
                     measured_ratio=ratio, predicted_ratio=table.predict(space, pol) / dense_pred,
                     measured_ms=min(ms), predicted_ms=table.predict(space, pol),
                     anchored_ms=factor * table.predict(space, pol),
                     layer_sum_ms=table.layer_sum(space.layers(space.channels(pol), size)))

        def err(pred: Callable[[dict], float], kind: str) -> float:
            return statistics.median(abs(pred(r) - r["measured_ms"]) / r["measured_ms"]
                                     for r in rows if r["set"] == kind)

        fits = {"as_built": (table.scale, table.offset_ms), "layer_sum": (1.0, 0.0),
                "anchored": (factor * table.scale, factor * table.offset_ms)}
        for kind in sets:
            sub = [r for r in rows if r["set"] == kind]
            fits[f"fit_on_{kind}"] = fit_line([r["layer_sum_ms"] for r in sub],
                                              [r["measured_ms"] for r in sub])
        out[name] = {
            "table_build_s": table.build_seconds, "calibration": table.calibration,
            "anchor_ms": anchor_ms, "anchor_factor": factor,
            "ratio_error": {k: statistics.median(
                abs(r["predicted_ratio"] / r["measured_ratio"] - 1) for r in rows
                if r["set"] == k) for k in sets},
            # The noise floor: the two measurements of each network (least of three turns;
            # ratio to the dense network in alternation), level divided out.
            "measurements_disagree": level_and_shape(
                [{"measured_ms": r["measured_ratio"], "x": r["measured_ms"]} for r in rows],
                "x")["shape_abs_error"],
            "median_abs_error": {f: {k: err(lambda r, a=a, b=b: a * r["layer_sum_ms"] + b, k)
                                     for k in sets} for f, (a, b) in fits.items()},
            "fits": fits, "level_and_shape": {
                "as_built": level_and_shape(rows, "predicted_ms"),
                "anchored": level_and_shape(rows, "anchored_ms"),
                "layer_sum": level_and_shape(rows, "layer_sum_ms")}, "networks": rows}
    return out


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """``(scale, offset)`` of ``ys ≈ scale × xs + offset`` by least squares (the best a line
    through absolute timings of one set can do, for comparison with the table's calibration)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    return slope, my - slope * mx


def level_and_shape(rows: list[dict], key: str) -> dict[str, float]:
    """``level`` = median of ``row[key] / measured``; ``shape`` = median |ratio / level − 1|."""
    q = [r[key] / r["measured_ms"] for r in rows]
    level = statistics.median(q)
    return {"level": level, "shape_abs_error": statistics.median(abs(x / level - 1) for x in q)}


def latency_runtimes(quick: bool) -> dict:
    """Measured latency of the same pruned networks in eager PyTorch and in onnxruntime (the
    exported model, CPU), 224x224, 1 and 2 threads: does pruning buy speed in the runtime the
    model ships in, and does channel rounding matter there (Torch-Pruning #38)?"""
    from prunetune.evaluators import measure_latency, model_cost, prune_to_channels
    from prunetune.search import repair, uniform_at_budget

    size = 224
    space = get_space("mobilenet_v2", num_classes=10)
    space16 = get_space("mobilenet_v2", num_classes=10, round_to=16)
    base = space.build_model()
    dense = policy_cost(space, space.uniform(1.0), size).flops
    rng = random.Random(0)
    nets: list[tuple[str, Any, dict]] = [("dense", space, space.full_channels())]
    for frac in ((0.5,) if quick else (0.3, 0.5, 0.7)):
        lim = {"flops": frac * dense}
        nets.append((f"uniform_{frac:.0%}", space,
                     space.channels(uniform_at_budget(space, lim, size))))
        if frac == 0.5:
            nets.append(("uniform_50%_round16", space16,
                         space16.channels(uniform_at_budget(space16, lim, size))))
            for k in range(1 if quick else 4):
                raw = {g: rng.choice(space.ratio_choices()) for g in space.group_names}
                nets.append((f"random_50%_{k}", space,
                             space.channels(repair(space, raw, lim, size)[0])))
    repeats = 5 if quick else 21
    rows = []
    for name, sp, ch in nets:
        net = prune_to_channels(base, sp, ch, importance=None)
        row = {"name": name, "flops_fraction": model_cost(net, size).flops / dense}
        for threads in ((1,) if quick else (1, 2)):
            for rt in ("torch", "onnxruntime"):
                row[f"{rt}_{threads}t_ms"] = measure_latency(
                    net, size, threads=threads, warmup=3, repeats=repeats, runtime=rt).median_ms
        rows.append(row)
        print(row, flush=True)
    out: dict[str, Any] = {"input_size": size, "model": "mobilenet_v2 x1.0, 10 classes",
                           "repeats": repeats, "rows": rows, "summary": {}}
    d = rows[0]
    for key in [k for k in d if k.endswith("_ms")]:
        pruned = [r for r in rows[1:] if not r["name"].endswith("round16")]
        # Latency reduction per FLOPs reduction (1.0: latency falls as fast as FLOPs).
        ratio = statistics.median((1 - r[key] / d[key]) / (1 - r["flops_fraction"])
                                  for r in pruned)
        out["summary"][key] = {"dense_ms": d[key], "latency_per_flops_reduction": ratio}
    return out


def gpu_throughput(quick: bool) -> dict:
    """Training, scoring and latency on each device here (CPU always; CUDA in fp32/TF32, bf16
    and fp16 where torch sees a GPU): MobileNetV2-1.0, 10 classes, synthetic images held in
    memory (the numbers are speed, not accuracy). Run by bench/gpu_check.sh."""
    from prunetune.evaluators import (ImageData, Split, configure_backends, measure_latency,
                                      resolve_precision)

    def synthetic(n: int, size: int) -> ImageData:
        g = torch.Generator().manual_seed(0)
        split = Split(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g))
        return ImageData("synthetic", [str(i) for i in range(10)], split, split, split,
                         (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    cuda = torch.cuda.is_available()
    arms = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16"), ("cuda", "fp16")]
                                if cuda else [])
    sizes = (32,) if quick else (32, 224)
    steps, warm = (2, 1) if quick else (30, 5)
    space = get_space("mobilenet_v2", num_classes=10)
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name() if cuda else None,
                           "model": "mobilenet_v2 x1.0, 10 classes", "batch_size": 64,
                           "train_images_per_s": {}, "score_seconds": {}, "latency_ms": {}}
    for size in sizes:
        data = synthetic(64 * 8, size)
        for dev, prec in arms:
            if dev == "cpu" and size > 32 and not quick:
                n_steps, n_warm = 4, 1  # 224 px on the CPU: a few steps tell the rate
            else:
                n_steps, n_warm = steps, warm
            configure_backends(dev)
            m = space.build_model().to(dev, memory_format=torch.channels_last)
            gen = torch.Generator().manual_seed(0)
            opt = train_steps(m, data, n_warm, lr=0.01, batch_size=64, gen=gen, precision=prec)
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_steps(m, data, n_steps, lr=0.01, batch_size=64, gen=gen, precision=prec,
                        optimizer=opt)
            if dev == "cuda":
                torch.cuda.synchronize()
            rate = 64 * n_steps / (time.perf_counter() - t0)
            out["train_images_per_s"][f"{dev}-{prec}-{size}px"] = rate
            print(f"train {dev} {prec} {size}px: {rate:.0f} images/s", flush=True)
    # One candidate's quick score (20 BN batches + 40 steps, the default) at 32 px.
    data = synthetic(64 * 8, 32)
    base = space.build_model()
    ch = space.channels(space.uniform(0.5))
    for dev in ["cpu"] + (["cuda"] if cuda else []):
        b = base.to(dev)
        cfg = ScoreConfig(bn_batches=2, steps=2) if quick else ScoreConfig()
        score_candidate(b, space, data, ch, cfg)  # warm-up (cuDNN autotuning, gradients)
        t0 = time.perf_counter()
        score_candidate(b, space, data, ch, cfg)
        out["score_seconds"][f"{dev}-{resolve_precision('auto', dev)}"] = \
            time.perf_counter() - t0
    base = base.cpu()
    for dev in ["cpu"] + (["cuda"] if cuda else []):
        lat = measure_latency(base, 32 if quick else 224, device=dev, threads=1, warmup=3,
                              repeats=5 if quick else 30)
        out["latency_ms"][f"{dev}-{32 if quick else 224}px-batch1"] = lat.median_ms
    print(json.dumps(out), flush=True)
    return out


def soak(quick: bool) -> dict:
    """A 300-trial study on SQLite and on PostgreSQL with a stand-in evaluation, a trial worker
    SIGKILLed every ~20 trials and the driver SIGKILLed once and resumed; checks that nothing
    is lost or duplicated (see bench/soak.py). The log goes beside the results."""
    from soak import soak as run

    log = None if quick else os.path.join(ROOT, "bench", "results", "soak.log")
    return run(quick, log)


BENCHES = {"soak": soak, "spaces_vs_uniform": spaces_vs_uniform, "spaces_vs_uniform_30": spaces_vs_uniform_30, "gpu_throughput": gpu_throughput, "latency_runtimes": latency_runtimes, "latency_fit": latency_fit,
           "latency_fit_2t": functools.partial(latency_fit, threads=2),
           "latency_fit_onnxruntime": functools.partial(latency_fit, runtime="onnxruntime"),
           "latency_fit_onnxruntime_2t": functools.partial(latency_fit, runtime="onnxruntime",
                                                         threads=2),
           "latency_fit_onnxruntime_r16": functools.partial(latency_fit, runtime="onnxruntime",
                                                          round_to=16),
           "latency_vs_uniform": latency_vs_uniform, "latency_vs_uniform_70": latency_vs_uniform_70,
           "latency_vs_uniform_70_onnxruntime": latency_vs_uniform_70_onnxruntime, "families_at_budget": families_at_budget, "importance_at_budget": importance_at_budget, "prune_speed": prune_speed, "score_fidelity_at_budget": score_fidelity_at_budget,
           "search_ablation": search_ablation, "gain_vs_epochs": gain_vs_epochs,
           "sensitivity_rules_on_dev": sensitivity_rules_on_dev,
           "sampler_on_dev": sampler_on_dev, "sampler_on_dev_more": sampler_on_dev_more,
           "search_vs_uniform": search_vs_uniform, "search_vs_uniform_full": search_vs_uniform_full,
           "search_quality": search_quality,
           "search_quality_full": search_quality_full,
           "sample_efficiency": sample_efficiency, "score_fidelity": score_fidelity, "score_throughput": score_throughput,
           "engine_overhead": engine_overhead, "latency": latency}


# Where a long benchmark saves what it has so far (set by main; None for --quick runs).
PARTIAL: dict[str, Any] = {}


def save(name: str, res: dict, t0: float, quick: bool, out: str | None) -> dict:
    """Write ``out/NAME.json`` (command, machine, date, results); returns the record."""
    rec = {"bench": name, "command": "python " + " ".join(sys.argv), "date": time.strftime(
        "%Y-%m-%d %H:%M"), "machine": machine(), "seconds": time.perf_counter() - t0,
        "quick": quick, "results": res}
    if out is not None:
        os.makedirs(out, exist_ok=True)
        tmp = os.path.join(out, f".{name}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(rec, f, indent=1)
        os.replace(tmp, os.path.join(out, f"{name}.json"))
    return rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", metavar="name", choices=sorted(BENCHES),
                   help="one or more of: " + ", ".join(sorted(BENCHES)))
    p.add_argument("--quick", action="store_true", help="small smoke run; results not saved")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    a = p.parse_args()
    out = None if a.quick else a.out
    for name in a.names:  # one after another, each with its own record
        t0 = time.perf_counter()
        # Benchmarks that run for an hour save each finished part (marked "complete": false).
        PARTIAL["save"] = functools.partial(_save_partial, name, t0, a.quick, out)
        res = BENCHES[name](a.quick)
        print(json.dumps(save(name, res, t0, a.quick, out), indent=1), flush=True)
    return 0


def _save_partial(name: str, t0: float, quick: bool, out: str | None, res: dict) -> dict:
    return save(name, {**res, "complete": False}, t0, quick, out)


if __name__ == "__main__":
    from prunetune.cli import exit_now

    exit_now(main())  # without the 2 s interpreter tear-down
