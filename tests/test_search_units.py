from __future__ import annotations

import random

import pytest

from prunetune.evaluators import policy_cost
from prunetune.search import dominates, hypervolume_2d, pareto_indices, repair, uniform_at_budget
from prunetune.spaces import get_space

from conftest import random_policy


def test_pareto_and_dominance():
    pts = [(0.9, 10), (0.8, 5), (0.85, 12), (0.7, 5), (0.9, 10)]
    mx = [True, False]
    assert dominates((0.9, 10), (0.85, 12), mx) and not dominates((0.9, 10), (0.9, 10), mx)
    assert pareto_indices(pts, mx) == [0, 1, 4]


def test_hypervolume_known_values():
    assert hypervolume_2d([(0.5, 0.5)], ref_cost=1.0) == pytest.approx(0.25)
    # Two steps: (cost .2, acc .4) and (cost .6, acc .8): .4*.4 + .8*.4 = .48
    assert hypervolume_2d([(0.4, 0.2), (0.8, 0.6)], ref_cost=1.0) == pytest.approx(0.48)
    # A dominated point adds nothing; points beyond the reference add nothing.
    assert hypervolume_2d([(0.4, 0.2), (0.8, 0.6), (0.3, 0.5), (0.99, 1.5)],
                          ref_cost=1.0) == pytest.approx(0.48)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.9, 1.0])
def test_repair_lands_on_target_under_budget(target):
    space = get_space("mobilenet_v2")
    limit = 300e6
    rng = random.Random(int(target * 10))
    for _ in range(5):
        raw = random_policy(space, rng)
        scaled, factor = repair(space, raw, {"flops": limit}, 224, target, fill=False)
        flops = policy_cost(space, scaled, 224).flops
        assert flops <= limit * target + 1e-6
        # Near the target: one more rounding step up would cross it.
        assert flops >= 0.85 * limit * target or all(v == space.high for v in scaled.values())
        space.validate(scaled)
        # The allocation is kept: ratios unclipped by the bounds keep their proportions.
        free = [k for k in raw if space.low < scaled[k] < space.high]
        if len(free) >= 2:
            a, b = free[:2]
            assert scaled[a] / scaled[b] == pytest.approx(raw[a] / raw[b], rel=1e-6)
        # Filled (the default): closer to the target, still under it, each group at most one
        # channel step above the common scaling.
        pol, same = repair(space, raw, {"flops": limit}, 224, target)
        filled = policy_cost(space, pol, 224).flops
        assert same == factor and flops <= filled <= limit * target + 1e-6
        before, after = space.channels(scaled), space.channels(pol)
        assert all(0 <= after[g] - before[g] <= space.round_to for g in before)


def test_uniform_baseline_is_uniform_and_at_budget():
    space = get_space("mobilenet_v2")
    pol = uniform_at_budget(space, {"flops": 300e6}, 224)
    assert len(set(pol.values())) == 1
    assert 0.97 * 300e6 <= policy_cost(space, pol, 224).flops <= 300e6


def test_define_by_run_with_round_to_choices_and_budget():
    import optuna

    from prunetune.search._searcher import DefineByRun

    space = get_space("mobilenet_v2", width_mult=0.5, num_classes=10)
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 64).flops
    define = DefineByRun(space.name, space.config(), {"flops": limit}, 64,
                         round_to_choices=(8, 16, 32))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        cfg = define(trial)
        rt = cfg["round_to"]
        seen.add(rt)
        full = space.full_channels()
        assert all(c % rt == 0 or c == full[g] for g, c in cfg["channels"].items())
        from prunetune.evaluators import channels_cost
        assert channels_cost(space, cfg["channels"], 64).flops <= limit
        study.tell(trial, 0.0)
    assert len(seen) >= 2


def test_round_to_choices_under_a_tight_budget_never_crash_a_trial():
    """Issue 24: at a budget that only round_to 8 can meet, a trial that sampled 32 (whose
    smallest network is 3x larger) raised in the repair. Choices over the budget are not
    offered, and the cost targets start at the smallest network of those that are."""
    import optuna

    from prunetune.search import BudgetError
    from prunetune.search._repair import smallest_fraction
    from prunetune.search._searcher import DefineByRun

    space = get_space("mobilenet_v2", width_mult=0.5, num_classes=10)
    smallest = {r: policy_cost(get_space(space.name, **{**space.config(), "round_to": r}),
                               space.uniform(space.low), 32).flops for r in (8, 16, 32)}
    limit = 1.5 * smallest[8]
    assert smallest[8] < limit < smallest[16] < smallest[32]
    define = DefineByRun(space.name, space.config(), {"flops": limit}, 32,
                         round_to_choices=(32, 16, 8), front_every=2)
    assert define.round_to_choices == (8,)
    assert define.min_target == smallest_fraction(space, {"flops": limit}, 32) < 1.0
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        cfg = define(trial)  # raised ValueError("No policy of the space meets the budget")
        assert cfg["round_to"] == 8 and policy_cost(space, cfg["policy"], 32).flops <= limit
        study.tell(trial, 0.0)
    with pytest.raises(BudgetError, match=r"--round-to-choices \[16, 32\].*smallest"):
        DefineByRun(space.name, space.config(), {"flops": limit}, 32, round_to_choices=(16, 32))


def test_versus_uniform_reports_the_exact_mcnemar_test():
    from prunetune.search._final import mcnemar, versus_uniform

    # 8 images only the pick got right, none only uniform: p = 2 * 0.5**8.
    pick, uni = "1" * 8 + "10" * 5, "0" * 8 + "10" * 5
    t = mcnemar(pick, uni)
    assert (t["only_pick"], t["only_uniform"], t["test_images"]) == (8, 0, 18)
    assert t["p_value"] == pytest.approx(2 * 0.5 ** 8)
    row = lambda tag, c: {"tag": tag, "test_acc": c.count("1") / len(c), "test_correct": c,
                          "flops": 1e6}
    v = versus_uniform([row("trial3", pick), row("uniform", uni)])
    assert v["significant"] and v["gain_pp"] == pytest.approx(800 / 18)
    assert "+8 of 18 images" in v["message"] and "the search beats uniform width" in v["message"]
    # 3 against 5 discordant images: no significant difference, said so.
    pick, uni = "111" + "00000" + "1" * 10, "000" + "11111" + "1" * 10
    v = versus_uniform([row("trial3", pick), row("uniform", uni)])
    assert not v["significant"] and v["p_value"] == pytest.approx(0.7265625)
    assert "no significant difference" in v["message"] and "-2 of 18 images" in v["message"]
    with pytest.raises(ValueError, match="same images"):
        mcnemar("10", "1")


def test_local_sampler_perturbs_the_best_trial_at_the_budget():
    import optuna

    from prunetune.search import SAMPLERS

    dist = optuna.distributions.FloatDistribution(0.1, 1.0, step=0.05)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=SAMPLERS["local"](0, 16))
    names = [f"g{i}" for i in range(6)]
    best = {n: 0.5 for n in names}
    for acc, params in ((0.6, {n: 0.9 for n in names}), (0.8, best),  # explores: no anchor
                        (0.95, {**{n: 0.2 for n in names}, "cost_target": 0.5})):
        dists = {n: dist for n in names}
        if "cost_target" in params:
            dists["cost_target"] = optuna.distributions.FloatDistribution(0.0, 1.0)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  values=[acc, 1.0]))
    proposals = []
    for _ in range(20):
        t = study.ask()
        proposals.append([t.suggest_float(n, 0.1, 1.0, step=0.05) for n in names])
        study.tell(t, [0.1, 1.0])
    flat = sorted(v for p in proposals for v in p)
    # Around the best at-budget trial (0.5), not the explorer (0.2) or the worse trial (0.9),
    # on the grid, and not all equal to it.
    assert 0.45 <= flat[len(flat) // 2] <= 0.55, flat
    assert 0.3 < sum(flat) / len(flat) < 0.7
    assert all(abs(v / 0.05 - round(v / 0.05)) < 1e-6 for v in flat)
    assert len(set(flat)) > 3


def test_failures_record_the_optuna_trial_number(tmp_path):
    """Issue 24: failures.jsonl gave Ray's trial id ("a1b2c_00003"), which names nothing in
    the study; it gives the Optuna number now, Ray's id beside it."""
    import json
    from types import SimpleNamespace

    import optuna

    from prunetune.search._searcher import DefineByRun, PrunetuneSearch
    from prunetune.search._study import _progress_callback, _Progress

    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 32).flops
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"]
                        ).ask()  # trial 0: from an earlier round, with another Ray id
    searcher = PrunetuneSearch(space=DefineByRun(space.name, space.config(), {"flops": limit}, 32),
                               metric=["accuracy", "flops"], mode=["max", "min"],
                               storage=storage, study_name="s",
                               sampler=optuna.samplers.RandomSampler(seed=0))
    for ray_id in ("ab12_00000", "ab12_00001"):
        assert searcher.suggest(ray_id) is not None
    assert searcher.optuna_number("ab12_00001") == 2 and searcher.optuna_number("x") is None
    lines: list[str] = []
    path = tmp_path / "failures.jsonl"
    cb = _progress_callback(_Progress(3, 0, lines.append), str(path), searcher.optuna_number)
    cb.on_trial_error(0, [], SimpleNamespace(trial_id="ab12_00001", error_msg="boom\nDiverged"))
    row = json.loads(path.read_text())
    assert (row["trial"], row["ray_trial"], row["reason"]) == (2, "ab12_00001", "Diverged")
    assert lines == ["  trial 2 failed: Diverged"]
