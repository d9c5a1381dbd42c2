"""The parts of the search that decide where trials land and which candidate is picked:
cost-aware priors, trials at the budget, the refinement ladder's bookkeeping."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from prunetune.evaluators import channels_cost, policy_cost
from prunetune.search import (DEFAULT_ALPHAS, DEFAULT_PRIORS, parse_priors, Problem, RefineSettings,
                              StudySettings, at_budget, cost_aware, marginal_costs, refine_order,
                              repair, start_points)
from prunetune.search._searcher import DefineByRun
from prunetune.spaces import get_space

from conftest import made_up_sensitivity


def test_marginal_costs_match_the_cost_model():
    space = get_space("mobilenet_v2", width_mult=0.5, num_classes=10)
    costs = marginal_costs(space, "flops", 32)
    full = space.full_channels()
    dense = channels_cost(space, full, 32).flops
    for g in ("stem", "block2", "stage7", "last"):
        step = space.round_to
        fewer = channels_cost(space, {**full, g: full[g] - step}, 32).flops
        assert costs[g] == pytest.approx((dense - fewer) / step)
    # At 32x32 a stem channel (16x16 maps) costs far more than a `last` channel (1x1 maps).
    assert costs["stem"] > 10 * costs["last"]


def test_cost_aware_keeps_cheap_channels_and_alpha_zero_is_uniform():
    space = get_space("mobilenet_v2", width_mult=0.5, num_classes=10)
    costs = marginal_costs(space, "flops", 32)
    assert set(cost_aware(space, costs, 0.0).values()) == {space.high}
    pol = cost_aware(space, costs, 0.5)
    assert max(pol.values()) == space.high and pol["last"] > pol["stem"]
    # Unclipped ratios fall as the cost of a channel rises, as costs ** -alpha.
    free = sorted((costs[g], pol[g]) for g in pol if space.low < pol[g] < space.high)
    assert len(free) >= 5
    for (c1, r1), (c2, r2) in zip(free, free[1:]):
        assert r2 / r1 == pytest.approx((c2 / c1) ** -0.5)
    limit = 0.4 * policy_cost(space, space.uniform(1.0), 32).flops
    fixed, _ = repair(space, pol, {"flops": limit}, 32)
    assert 0.9 * limit <= policy_cost(space, fixed, 32).flops <= limit
    with pytest.raises(ValueError, match="alpha"):
        cost_aware(space, costs, float("nan"))


def test_start_points_are_uniform_then_priors_on_the_grid():
    space = get_space("mobilenet_v2", width_mult=0.5, num_classes=10)
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 32).flops
    problem = Problem(space.name, space.config(), {"flops": limit}, deploy_size=32)
    priors = parse_priors(",".join(map(str, DEFAULT_ALPHAS)) + ",ramp:1")
    assert priors == tuple(f"cost:{a:g}" for a in DEFAULT_ALPHAS) + ("ramp:1",)
    pts = start_points(space, problem, StudySettings(trials=10, priors=priors,
                                                     allocation="per-group"))
    assert [t for t, _ in pts] == ["uniform"] + [f"cost-aware a={a:g}" for a in DEFAULT_ALPHAS] \
        + ["depth-ramp b=1"]
    ramp = pts[-1][1]  # later groups keep at least as much as earlier ones
    assert list(ramp.values()) == sorted(ramp.values())
    grid = set(space.ratio_choices())
    for _, raw in pts:
        assert set(raw.values()) <= grid
    assert len({tuple(raw.values()) for _, raw in pts}) == len(pts)  # all different
    assert [t for t, _ in start_points(space, problem, StudySettings(trials=10, priors=()))] \
        == ["uniform"]
    with pytest.raises(ValueError, match="needs a sensitivity measurement"):
        start_points(space, problem, StudySettings(trials=10))
    measured = replace(problem, sensitivity=made_up_sensitivity(space).to_json())
    default = [t for t, _ in start_points(space, measured, StudySettings(trials=10))]
    assert default == ["uniform", "sensitivity t=1"] + [f"cost-aware a={p[5:]}"
                                                        for p in DEFAULT_PRIORS[1:]]
    assert parse_priors("none") == () and parse_priors("") == ()
    for bad in ("tilt:0.5", "ramp:x", "ramp:nan", "cost:"):
        with pytest.raises(ValueError, match="FAMILY:VALUE"):
            parse_priors(bad)


def test_most_trials_land_at_the_budget_and_some_explore():
    space = get_space("mobilenet_v2", width_mult=0.5, num_classes=10)
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 32).flops
    define = DefineByRun(space.name, space.config(), {"flops": limit}, 32, front_every=4)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({n: space.high for n in space.group_names},
                        user_attrs={"baseline": "uniform"})
    fractions, explored = [], []
    for _ in range(16):
        trial = study.ask()
        cfg = define(trial)
        fractions.append(channels_cost(space, cfg["channels"], 32).flops / limit)
        explored.append("cost_target" in trial.params)
        study.tell(trial, 0.0)
    assert not explored[0]  # the enqueued uniform baseline lands at the budget
    assert explored == [i % 4 == 3 for i in range(16)]
    at = [f for f, e in zip(fractions, explored) if not e]
    assert all(0.9 <= f <= 1.0 for f in at), at
    assert max(fractions) <= 1.0


def _rec(trial, acc, flops, baseline=""):
    return {"trial": trial, "accuracy": acc, "flops": flops, "macs": flops / 2, "params": 1,
            "latency_ms": 1.0, "baseline": baseline, "channels": {}}


def test_at_budget_and_refine_order():
    recs = [_rec(0, 0.70, 99, "uniform"), _rec(1, 0.80, 50), _rec(2, 0.75, 97),
            _rec(3, 0.60, 96), _rec(4, 0.90, 101)]
    near = at_budget(recs, {"flops": 100}, 0.95)
    assert [r["trial"] for r in near] == [2, 0, 3]  # within 95-100%, best quick score first
    refined = {"rungs": [
        {"steps": 10, "results": [{"trial": 0, "score": -0.5}, {"trial": 2, "score": -0.4},
                                  {"trial": 3, "score": -0.2}]},
        {"steps": 30, "results": [{"trial": 3, "score": -0.1}, {"trial": 2, "score": -0.3}]}]}
    order = [r["trial"] for r in refine_order(recs[:4], refined)]
    # Last rung first (3 beat 2 there), then the first rung's loser, then the rest by score.
    assert order == [3, 2, 0, 1]
    assert [r["trial"] for r in refine_order(recs[:4], None)] == [1, 2, 0, 3]


def test_refine_settings_are_checked():
    assert not RefineSettings(top=1).enabled and RefineSettings().enabled
    for bad in ({"eta": 1}, {"steps": ()}, {"steps": (0,)}, {"near": 0.0}, {"top": -1}):
        with pytest.raises(ValueError):
            RefineSettings(**bad)


def test_front_keeps_only_records_within_every_limit_latency_included():
    from prunetune.search import front

    def rec(trial, acc, flops, ms):
        return {"trial": trial, "accuracy": acc, "flops": flops, "latency_ms": ms}

    records = [rec(0, 0.70, 100, 5.0), rec(1, 0.80, 100, 9.0), rec(2, 0.60, 50, 4.0),
               rec(3, 0.90, 200, 4.0)]
    got = front(records, {"flops": 150, "latency": 6.0}, ["accuracy", "flops", "latency"])
    # trial 1 is over the latency limit and trial 3 over the FLOPs limit, though both would
    # dominate trial 0 without the limits.
    assert [r["trial"] for r in got] == [2, 0]


def test_close_orphans_fails_running_trials_through_public_api(tmp_path):
    from optuna.trial import TrialState

    from prunetune.search import close_orphans, open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, study_name="s")
    study.ask()  # RUNNING, as a trial whose driver died
    done = study.ask()
    study.tell(done, 1.0)
    assert close_orphans(study) == 1
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    assert "orphaned" in study.user_attrs["failure:0"]


@pytest.mark.parametrize("objectives", [("accuracy", "flops"), ("accuracy", "latency"),
                                        ("accuracy", "flops", "latency")])
def test_front_is_optunas_front_over_the_same_objectives(objectives, tmp_path):
    import random

    from prunetune.search import OBJECTIVES, front, trial_records

    study = optuna.create_study(directions=[OBJECTIVES[o].direction for o in objectives])
    rng = random.Random(3)
    for i in range(30):
        rec = {"accuracy": rng.random(), "flops": rng.randint(1, 100),
               "latency_ms": rng.uniform(1, 10)}
        attrs = {"flops": rec["flops"], "macs": rec["flops"] // 2, "params": 1,
                 "latency": {"median_ms": rec["latency_ms"]}, "policy": {}, "channels": {}}
        study.add_trial(optuna.trial.create_trial(
            values=[rec[OBJECTIVES[o].key] for o in objectives], user_attrs=attrs))
    ours = {r["trial"] for r in front(trial_records(study), {}, objectives)}
    assert ours == {t.number for t in study.best_trials}
    assert 1 < len(ours) < 30
