"""One contract suite per registry (in the manner of Optuna's ``parametrize_sampler``): every
registered sampler, objective, importance criterion, rank-by metric, latency runtime and
start-point family goes through the same test, so a new entry is checked the moment it is
registered. (Spaces have theirs in tests/test_space_contract.py.)"""

from __future__ import annotations

import csv
import json
import math
import random

import optuna
import pytest
import torch
import torch.nn as nn

from prunetune._registry import Registry
from prunetune.evaluators import (IMPORTANCES, RANK_BY, RUNTIMES, CandidateEvaluator,
                                  ScoreConfig, load_data, load_into, measure_latency,
                                  policy_cost, prune_to_channels, read_state_dict,
                                  removal_plan, score_candidate)
from prunetune.search import (ALLOCATIONS, OBJECTIVES, SAMPLERS, Problem, StudySettings,
                              enqueue_start_points, front, trial_records, write_front)
from prunetune.search._priors import FAMILIES
from prunetune.search._study import _define_and_points, make_sampler
from prunetune.spaces import get_space

from conftest import made_up_sensitivity, masked_copy, random_policy


def test_a_registry_names_the_kind_the_bad_name_and_the_valid_ones():
    r: Registry[int] = Registry("widget", {"a": 1})
    r.add("b", 2)
    assert r.lookup("b") == 2 and list(r) == ["a", "b"] and "a" in r and len(r) == 2
    with pytest.raises(ValueError, match=r"^Unknown widget 'c'; valid names are \['a', 'b'\]\.$"):
        r.lookup("c")
    with pytest.raises(ValueError, match="widget 'a' is registered already"):
        r.register("a")(3)
    assert r["a"] == 1 and r.get("c") is None  # the first registration stands; get as a dict


# -- samplers ---------------------------------------------------------------------------------
def _sampled(name: str, seed: int, trials: int = 12) -> tuple[list, list[str], float]:
    """A study driven as the search drives it (start points enqueued, then the sampler), with
    the define-by-run space and a stand-in accuracy; returns (params, baselines, limit)."""
    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 32).flops
    problem = Problem(space.name, space.config(), {"flops": limit}, deploy_size=32,
                      sensitivity=made_up_sensitivity(space).to_json())
    settings = StudySettings(trials=trials, sampler=name, objectives=("accuracy", "flops"),
                             allocation="per-group" if name == "local" else "structured")
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(name, seed, trials))
    define, points = _define_and_points(problem, settings, space, lambda m: None)
    enqueue_start_points(study, points, trials)
    for _ in range(trials):
        trial = study.ask()
        rec = define(trial)
        flops = policy_cost(space, rec["policy"], 32).flops
        assert flops <= limit * (1 + 1e-9), (name, trial.number, flops, limit)
        # A stand-in accuracy that prefers wide late layers: something for a sampler to learn.
        acc = sum(i * r for i, r in enumerate(rec["policy"].values())) / len(rec["policy"]) ** 2
        study.tell(trial, [acc, flops])
    return ([t.params for t in study.trials],
            [t.user_attrs.get("baseline", "") for t in study.trials], limit)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_the_start_points_then_proposes_new_policies_within_budget(name):
    params, baselines, _ = _sampled(name, seed=3)
    n_start = 1 + len(StudySettings(trials=12).priors)
    assert baselines[:n_start][0] == "uniform" and all(baselines[:n_start])
    assert not any(baselines[n_start:])
    proposed = [json.dumps(p, sort_keys=True) for p in params[n_start:]]
    assert len(set(proposed)) == len(proposed), "a sampler proposed the same trial twice"
    # Seeded: the same seed proposes the same trials, another seed others.
    assert _sampled(name, seed=3)[0] == params
    assert _sampled(name, seed=4)[0][n_start:] != params[n_start:]


# -- objectives -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluator(cifar_dir) -> CandidateEvaluator:
    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    torch.manual_seed(0)
    return CandidateEvaluator(space.name, space.config(), space.build_model().state_dict(),
                              load_data(cifar_dir, per_class=10, seed=0),
                              ScoreConfig(bn_batches=1, steps=0, batch_size=16), deploy_size=32,
                              latency="measure")


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_objective_goes_from_the_evaluator_to_the_record_the_front_and_the_csv(
        objective, evaluator, tmp_path):
    objectives = ("accuracy",) if objective == "accuracy" else ("accuracy", objective)
    space = get_space(evaluator.space, **evaluator.space_config)
    study = optuna.create_study(directions=[OBJECTIVES[o].direction for o in objectives])
    outs = []
    for width in (1.0, 0.75, 0.5, 0.25):
        policy = space.uniform(width)
        out = evaluator({"policy": policy, "channels": space.channels(policy)})
        key = OBJECTIVES[objective].key
        assert isinstance(out[key], float | int) and not math.isnan(out[key]), (key, out)
        study.add_trial(optuna.trial.create_trial(
            params={}, distributions={}, values=[out[OBJECTIVES[o].key] for o in objectives],
            user_attrs=out["attrs"]))
        outs.append(out)
    records = trial_records(study)
    key = OBJECTIVES[objective].key
    assert [r[key] for r in records] == [o[key] for o in outs]
    pareto = front(records, {}, objectives)
    sign = {o: 1 if OBJECTIVES[o].maximize else -1 for o in objectives}

    def dominated(r):
        better = [[sign[o] * q[OBJECTIVES[o].key] - sign[o] * r[OBJECTIVES[o].key]
                   for o in objectives] for q in records]
        return any(all(d >= 0 for d in ds) and any(d > 0 for d in ds) for ds in better)

    assert {r["trial"] for r in pareto} == {r["trial"] for r in records if not dominated(r)}
    write_front(str(tmp_path), pareto)
    rows = list(csv.DictReader(open(tmp_path / "pareto.csv")))
    assert [float(row[key]) for row in rows] == pytest.approx([r[key] for r in pareto])


# -- importance criteria ----------------------------------------------------------------------
@pytest.mark.parametrize("importance", list(IMPORTANCES))
def test_every_importance_prunes_exactly_what_masking_cuts(importance):
    """The pruned network computes exactly what the dense one computes with the removed
    channels cut off (their consumers' input weights zeroed)."""
    torch.manual_seed(0)
    space = get_space("mobilenet_v2", width_mult=0.5, num_classes=10)
    base = space.build_model().eval()
    for m in base.modules():  # non-trivial BN statistics so every channel matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.2, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    # Criteria that rank by weight x gradient get gradients (any will do for this contract).
    grads = {n: torch.randn_like(p) for n, p in base.named_parameters()}
    for n, p in base.named_parameters():
        p.grad = grads[n].clone()
    channels = space.channels(random_policy(space, random.Random(3)))
    plan = removal_plan(base, space, channels, importance)
    assert plan, "policy should remove something"
    masked = masked_copy(base, space, plan)
    pruned = prune_to_channels(base, space, channels, importance, grads=grads).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b, dense = pruned(x), masked(x), base(x)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not torch.allclose(a, dense, atol=1e-3), "masking must change the output"


# -- rank-by metrics --------------------------------------------------------------------------
@pytest.mark.parametrize("rank_by", list(RANK_BY))
def test_every_rank_by_metric_scores_the_trained_base_above_a_tenth_of_it(rank_by, cifar_dir,
                                                                           base_ckpt):
    """Higher is better for every metric: the trained network scores above the same network
    pruned to 10% with no fine-tune."""
    space = get_space("mobilenet_v2", num_classes=10)
    base = space.build_model()
    load_into(base, read_state_dict(base_ckpt), base_ckpt, space.head)
    data = load_data(cifar_dir, per_class=40, test_per_class=20, seed=0)
    cfg = ScoreConfig(bn_batches=2, steps=0, batch_size=32, rank_by=rank_by)
    dense, _ = score_candidate(base.eval(), space, data, space.full_channels(), cfg)
    tiny, _ = score_candidate(base, space, data, space.channels(space.uniform(0.1)), cfg)
    assert dense.score > tiny.score, (rank_by, dense.score, tiny.score)
    assert dense.score == (dense.metrics[rank_by] if rank_by == "accuracy"
                           else -dense.metrics[rank_by])


# -- latency runtimes -------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_every_runtime_times_a_network_and_says_which_it_is(runtime):
    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    lat = measure_latency(space.build_model().eval(), 32, threads=1, warmup=1, repeats=3,
                          runtime=runtime)
    assert lat.median_ms > 0 and lat.as_dict()["runtime"] == runtime


# -- start-point families ---------------------------------------------------------------------
@pytest.mark.parametrize("family,allocation", [
    (f, a) for f in FAMILIES for a in ALLOCATIONS if not (f == "ramp" and a == "structured")])
def test_every_start_point_family_is_enqueued_by_name_and_lands_on_the_budget(family,
                                                                              allocation):
    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 32).flops
    problem = Problem(space.name, space.config(), {"flops": limit}, deploy_size=32,
                      sensitivity=made_up_sensitivity(space, {"stage2": 5.0}).to_json())
    settings = StudySettings(trials=2, priors=(f"{family}:0.25",),
                             objectives=("accuracy", "flops"), allocation=allocation)
    study = optuna.create_study(directions=["maximize", "minimize"])
    define, points = _define_and_points(problem, settings, space, lambda m: None)
    enqueue_start_points(study, points, 2)
    uniform, member = (define(study.ask()) for _ in range(2))
    assert member["baseline"] == f"{FAMILIES[family]}=0.25"
    assert member["policy"] != uniform["policy"]
    assert 0.9 * limit <= policy_cost(space, member["policy"], 32).flops <= limit * (1 + 1e-9)
