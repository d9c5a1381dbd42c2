"""The search core with an injected fake evaluation: real local Ray, a real SQLite study, no
training. The fake's accuracy favours keeping late (cheap) channels, as real CIFAR runs do,
so the test can tell whether the study starts from the cost-aware priors, keeps trials at the
budget, and whether refinement picks by its own (higher-fidelity) numbers."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace

import pytest

from prunetune.evaluators import channels_cost, policy_cost
from prunetune.search import (DEFAULT_ALPHAS, Problem, RefineSettings, StudySettings, at_budget,
                              init_ray, open_storage, run_refine, run_study, trial_records)
from prunetune.spaces import get_space

pytestmark = pytest.mark.slow

SPACE = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)


class FakeEvaluate:
    """Accuracy = a smooth function of the kept fraction per group, late groups weighing more;
    a refinement rung (``score.steps``) adds a bonus for ``stage7`` that the quick score does
    not see, so the pick must come from the rungs, not from the quick score."""

    def __call__(self, config):
        ch, full = config["channels"], SPACE.full_channels()
        names = SPACE.group_names
        acc = sum((i + 1) * math.sqrt(ch[g] / full[g]) for i, g in enumerate(names))
        acc /= sum(i + 1 for i in range(len(names)))
        steps = config.get("score", {}).get("steps", 0)
        score = acc + (0.5 * ch["stage7"] / full["stage7"] if steps else 0.0)
        cost = channels_cost(SPACE, ch, 32)
        attrs = {k: v for k, v in config.items() if k != "score"}
        attrs.update(cost.as_dict(), metrics={"accuracy": acc, "kl": -score})
        return {"accuracy": acc, "score": score, **cost.as_dict(), "latency_ms": float("nan"),
                "attrs": attrs}


@pytest.fixture(scope="module")
def ray_local():
    # The fake lives in this test module: ship it to Ray's workers by value.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    init_ray(None, 2, log=lambda m: None)
    yield
    import ray

    ray.shutdown()


def test_study_priors_budget_refine_and_resume(tmp_path, ray_local):
    limit = 0.5 * policy_cost(SPACE, SPACE.uniform(1.0), 32).flops
    problem = Problem(SPACE.name, SPACE.config(), {"flops": limit}, deploy_size=32)
    settings = StudySettings(trials=10, workers=2, objectives=("accuracy", "flops"),
                             front_every=4, priors=tuple(f"cost:{a:g}" for a in DEFAULT_ALPHAS),
                             allocation="per-group")
    url = f"sqlite:///{tmp_path}/s.db"
    study = run_study(problem, settings, open_storage(url), FakeEvaluate(), str(tmp_path),
                      log=lambda m: None)
    recs = sorted(trial_records(study), key=lambda r: r["trial"])
    assert len(recs) == 10
    assert [r["baseline"] for r in recs[:4]] == ["uniform", "cost-aware a=0.25",
                                                  "cost-aware a=0.5", "cost-aware a=1"]
    assert len(set(recs[0]["policy"].values())) == 1  # uniform stays one width multiplier
    # Every trial within the budget; those not exploring the cost axis land at it.
    explorers = {t.number for t in study.trials if "cost_target" in t.params}
    assert explorers and explorers <= {3, 7}
    for r in recs:
        assert r["flops"] <= limit
        if r["trial"] not in explorers:
            assert r["flops"] >= 0.95 * limit, r
    # The fake rewards late channels: a cost-aware prior beats uniform width on it.
    assert max(r["accuracy"] for r in recs[1:4]) > recs[0]["accuracy"]

    values_before = {t.number: t.values for t in study.trials}
    msgs: list[str] = []
    refined = run_refine(recs, problem, RefineSettings(top=4, steps=(5, 10), rank_by="kl"),
                         FakeEvaluate(), str(tmp_path), workers=2, log=msgs.append)
    near = at_budget(recs, problem.limits, 0.95)
    # The start points (uniform width, priors) enter whatever their quick score, then the
    # four best sampled candidates by quick score.
    cands = [r for r in near if r["baseline"]] + [r for r in near if not r["baseline"]][:4]
    assert {r["trial"] for r in cands[:4]} == {0, 1, 2, 3}
    assert refined["candidates"] == [r["trial"] for r in cands]
    assert [len(r["results"]) for r in refined["rungs"]] == [len(cands), len(cands) // 2]
    # A progress line per candidate and rung, with the ETA of the whole refinement.
    lines = [m for m in msgs if m.startswith("  refine rung")]
    assert len(lines) == len(cands) + len(cands) // 2
    n = len(cands)
    assert lines[n - 1].startswith(f"  refine rung 1/2: [{n}/{n}] trial ") and " kl " in lines[0]
    assert lines[-1].startswith(f"  refine rung 2/2: [{n // 2}/{n // 2}]")
    assert lines[-1].endswith("ETA 0:00") and not lines[0].endswith("ETA 0:00")
    # The pick is the best of the last rung by the rung's own score.
    best = max(cands, key=lambda r: r["accuracy"] + 0.5 * r["channels"]["stage7"]
               / SPACE.full_channels()["stage7"])
    assert refined["pick"] == best["trial"]
    saved = json.loads((tmp_path / "refine.json").read_text())
    assert saved["pick"] == refined["pick"]
    # The rungs never reach the sampler: trial values are the quick scores, unchanged.
    study2 = run_study(problem, replace(settings, trials=12), open_storage(url),
                       FakeEvaluate(), str(tmp_path), log=lambda m: None)
    assert all(t.values == values_before[t.number] for t in study2.trials
               if t.number in values_before)
    # Resume: the same study grew by exactly the missing trials.
    assert len(trial_records(study2)) == 12 and len(study2.trials) == 12


class RaisesInRungs(FakeEvaluate):
    """The fake, except that trial 0's rung evaluations raise (a candidate that runs out of
    memory in a longer fine-tune)."""

    def __call__(self, config):
        if config.get("score") and config["trial"] == 0:
            raise RuntimeError("CUDA out of memory on this candidate")
        return super().__call__(config)


def test_a_rung_candidate_that_raises_is_ranked_last_and_the_others_go_on(tmp_path, ray_local):
    """A rung's candidates run as Ray tasks: one that raises is scored -inf with its reason,
    its progress line says so, and the others are ranked as usual."""
    channels = SPACE.channels(SPACE.uniform(0.5))
    flops = channels_cost(SPACE, channels, 32).flops
    problem = Problem(SPACE.name, SPACE.config(), {"flops": flops}, deploy_size=32)
    recs = [{"trial": t, "baseline": "uniform" if t == 0 else None, "channels": channels,
             "flops": flops, "accuracy": 0.5 + t / 10} for t in range(3)]
    msgs: list[str] = []
    refined = run_refine(recs, problem, RefineSettings(top=2, steps=(5,)), RaisesInRungs(),
                         str(tmp_path), workers=2, log=msgs.append)
    results = {r["trial"]: r for r in refined["rungs"][0]["results"]}
    assert sorted(results) == [0, 1, 2]
    assert results[0]["score"] == float("-inf") and "out of memory" in results[0]["failure"]
    assert all(results[t]["score"] > float("-inf") and not results[t]["failure"] for t in (1, 2))
    assert refined["pick"] in (1, 2)
    assert any(m.startswith("  refine rung 1/1: ") and "trial 0 failed" in m for m in msgs), msgs
