"""The sensitivity measurement, the allocations made from it, and the structured space."""

from __future__ import annotations

import math

import optuna
import pytest

from prunetune.evaluators import (Sensitivity, SensitivityConfig, get_base_model,
                                  get_sensitivity, load_data, policy_cost)
from prunetune.search import (StructuredAllocation, StudySettings, cost_aware, depth_buckets,
                              marginal_costs, repair, sensitivity_allocation)
from prunetune.spaces import get_space

from conftest import made_up_sensitivity

LIMITS = {"flops": 0.4 * 601_548_544}


@pytest.fixture(scope="module")
def space():
    return get_space("mobilenet_v2")


def _sens(space, hurts: dict[str, float]) -> Sensitivity:
    return made_up_sensitivity(space, hurts)


def test_the_threshold_rule_fits_the_budget_and_keeps_the_sensitive_groups(space):
    sens = _sens(space, {"stage2": 5.0, "block8": 3.0})
    pol = sensitivity_allocation(space, sens, LIMITS, 224)
    assert policy_cost(space, pol, 224).flops <= LIMITS["flops"]
    assert pol["stage2"] > 0.95 and pol["stage2"] >= pol["block8"] > pol["block9"]
    assert min(pol.values()) >= 0.2  # never below the smallest probe
    # A looser budget keeps at least as much of every group (the threshold only falls).
    loose = sensitivity_allocation(space, sens, {"flops": 0.6 * 601_548_544}, 224)
    assert all(loose[g] >= pol[g] - 1e-9 for g in pol) and loose != pol


def test_the_greedy_rule_fits_and_cuts_where_a_flop_costs_least_accuracy(space):
    sens = _sens(space, {"stage2": 5.0})
    pol = sensitivity_allocation(space, sens, LIMITS, 224, rule="greedy")
    assert policy_cost(space, pol, 224).flops <= LIMITS["flops"]
    assert pol["stage2"] == space.high and min(pol.values()) >= 0.2
    with pytest.raises(ValueError, match="rule"):
        sensitivity_allocation(space, sens, LIMITS, 224, rule="median")


def test_drops_are_made_monotone_and_a_foreign_measurement_is_refused(space):
    sens = Sensitivity((0.25, 0.5), {"a": [0.1, 0.3]}, {"a": [-0.02, 0.01]})
    assert sens.curve("a") == [(0.25, 0.3), (0.5, 0.3), (1.0, 0.0)]
    assert sens.curve("a", "accuracy") == [(0.25, 0.01), (0.5, 0.01), (1.0, 0.0)]
    with pytest.raises(ValueError, match="another network"):
        sensitivity_allocation(space, sens, LIMITS, 224)


def test_depth_buckets_follow_the_feature_map_resolution(space):
    buckets = depth_buckets(space)
    assert [g for b in buckets for g in b] == space.group_names  # all, in network order
    hw = space.network.input_hw(space.trace_size)
    anchors = {g.name: g.anchor for g in space.groups}
    res = [sorted({hw[anchors[g]][0] for g in b}, reverse=True) for b in buckets]
    # Six input resolutions (the stem reads the image) in five buckets: the stem joins the
    # first; every other bucket is one resolution, falling with depth.
    assert len(buckets) == 5 and buckets[0][0] == "stem" and len(res[0]) == 2
    assert all(len(r) == 1 for r in res[1:])
    assert [r[-1] for r in res] == sorted((r[-1] for r in res), reverse=True)
    two = depth_buckets(space, 2)
    assert len(two) == 2 and [g for b in two for g in b] == space.group_names


def test_start_points_are_points_of_the_structured_space(space):
    sens = _sens(space, {"stage2": 5.0})
    gen = StructuredAllocation(space, LIMITS, 224, sensitivity=sens)
    assert gen.names == ["alpha", "toward_sensitivity"] + [f"depth_{i}" for i in range(5)]
    assert gen.allocation(gen.point("uniform")) == space.uniform(space.high)
    costs = marginal_costs(space, "flops", 224)
    assert gen.allocation(gen.point("cost:-0.5")) == pytest.approx(cost_aware(space, costs, -0.5))
    assert gen.allocation(gen.point("sens:1")) == pytest.approx(
        sensitivity_allocation(space, sens, LIMITS, 224))
    half = gen.allocation(gen.point("sens:0.5"))
    assert half["block9"] == pytest.approx(math.sqrt(gen.sensitive["block9"]))
    # A depth multiplier scales its bucket's ratios alone (those the bounds do not clip).
    p = {**gen.point("cost:-0.5"), "depth_3": -0.3}
    moved = gen.allocation(p)
    base = gen.allocation(gen.point("cost:-0.5"))
    for g in space.group_names:
        if g in gen.buckets[3] and base[g] * math.exp(-0.3) > space.low:
            assert moved[g] == pytest.approx(base[g] * math.exp(-0.3))
        elif g not in gen.buckets[3]:
            assert moved[g] == base[g]
    for bad in ("ramp:1", "cost:3"):
        with pytest.raises(ValueError, match="not a point of the structured space"):
            gen.point(bad)
    with pytest.raises(ValueError, match="sens:T"):
        StructuredAllocation(space, LIMITS, 224).point("sens:1")


def test_a_structured_trial_samples_a_few_coordinates_and_lands_at_the_budget(space):
    from prunetune.search._searcher import DefineByRun

    define = DefineByRun(space.name, space.config(), LIMITS, 224, allocation="structured",
                         sensitivity_json=_sens(space, {"stage2": 5.0}).to_json())
    study = optuna.create_study(direction="maximize")
    for _ in range(4):
        trial = study.ask()
        out = define(trial)
        assert set(trial.params) == set(define.structured(space.round_to).names)
        flops = policy_cost(space, out["policy"], 224).flops
        assert 0.97 * LIMITS["flops"] <= flops <= LIMITS["flops"]
        study.tell(trial, 0.5)


def test_study_settings_refuse_what_the_structured_space_cannot_do():
    with pytest.raises(ValueError, match="--allocation 'grid' is not one of"):
        StudySettings(trials=4, allocation="grid")
    with pytest.raises(ValueError, match="ramp:1.*per-group"):
        StudySettings(trials=4, priors=("ramp:1",))
    with pytest.raises(ValueError, match="--sampler local.*per-group"):
        StudySettings(trials=4, sampler="local")
    StudySettings(trials=4, sampler="local", priors=("ramp:1",), allocation="per-group")


def test_sensitivity_is_measured_once_and_cached(cifar_dir, base_ckpt, tmp_path):
    data = load_data(cifar_dir, per_class=8, val_fraction=0.25, seed=0)
    space = get_space("mobilenet_v2", num_classes=data.num_classes)
    base, _ = get_base_model(space, data, checkpoint=base_ckpt)
    cfg = SensitivityConfig(probes=(0.25,), bn_batches=1, batch_size=16, val_images=16)
    said: list[str] = []
    first = get_sensitivity(base, space, data, folder=str(tmp_path), config=cfg,
                            log=said.append)
    assert set(first.drops) == set(space.group_names)
    assert all(len(v) == 1 and v[0] >= 0 for v in first.drops.values())  # KL >= 0
    assert any(v[0] > 0 for v in first.drops.values())
    assert all(len(v) == 1 and -1 <= v[0] <= 1 for v in first.accuracy_drops.values())
    again = get_sensitivity(base, space, data, folder=str(tmp_path), config=cfg,
                            log=said.append)
    assert again.drops == first.drops and any("cached" in m for m in said)
    n = len(list(tmp_path.iterdir()))
    get_sensitivity(base, space, data, folder=str(tmp_path),
                    config=SensitivityConfig(probes=(0.5,), bn_batches=1, val_images=16),
                    log=said.append)
    assert len(list(tmp_path.iterdir())) == n + 1  # other settings: measured again
    with pytest.raises(ValueError, match="probes"):
        SensitivityConfig(probes=(1.0,))


def test_the_sensitivity_start_point_lands_at_the_budget(space):
    sens = _sens(space, {"stage2": 5.0})
    raw = sensitivity_allocation(space, sens, LIMITS, 224)
    pol, _ = repair(space, raw, LIMITS, 224)
    assert 0.97 * LIMITS["flops"] <= policy_cost(space, pol, 224).flops <= LIMITS["flops"]


def test_a_resumed_run_searches_with_the_sensitivity_it_started_with(space, tmp_path):
    """The run folder's measurement wins over the cache and over measuring again (the
    study's coordinates mean what they meant when it started); no sens: prior, no pass."""
    from types import SimpleNamespace

    from prunetune.pipeline import SENSITIVITY_FILE, SearchJob, _measure_sensitivity
    from prunetune.search import parse_budget

    kept = _sens(space, {"stage2": 5.0}).to_json()
    (tmp_path / SENSITIVITY_FILE).write_text(kept)
    job = SearchJob(budgets=[parse_budget("50%-FLOPs")], out=str(tmp_path))
    said: list[str] = []
    # base_dev None: measuring now would fail; the run's own file must be taken.
    p = SimpleNamespace(job=job, base_dev=None, space=space, data=None, sensitivity_json=None)
    _measure_sensitivity(p, said.append)  # type: ignore[arg-type]
    assert p.sensitivity_json == kept and "the run's own" in said[0]
    none = SimpleNamespace(job=SearchJob(budgets=job.budgets, out=str(tmp_path / "x"),
                                         study=StudySettings(trials=4, priors=("cost:-0.5",))),
                           sensitivity_json=None)
    _measure_sensitivity(none, said.append)  # type: ignore[arg-type]
    assert none.sensitivity_json is None and len(said) == 1
