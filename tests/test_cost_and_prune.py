from __future__ import annotations

import random

import pytest
import torch

from prunetune.evaluators import (build_from_spec, channels_cost, load_pruned, make_spec,
                                  measure_latency, model_cost, policy_cost, prune,
                                  prune_to_channels, save_pruned)
from prunetune.spaces import get_space

from conftest import random_policy


def test_reference_numbers_mobilenet_v2_224():
    space = get_space("mobilenet_v2")
    cost = policy_cost(space, space.uniform(1.0), 224)
    assert (cost.flops, cost.macs, cost.params) == (601_548_544, 300_774_272, 3_504_872)
    assert model_cost(space.build_model(), 224) == cost


# Width 0.25 at 32 and 64 px is in tests/test_space_contract.py, for every space.
@pytest.mark.parametrize("width,size", [(0.5, 64), (0.25, 224)])
def test_analytic_equals_flop_counter_on_random_policies(width, size):
    # 2 settings x 13 policies = 26 random pruned networks, each counted both ways.
    space = get_space("mobilenet_v2", width_mult=width, num_classes=10)
    base = space.build_model()
    rng = random.Random(width * 1000 + size)
    for _ in range(13):
        pol = random_policy(space, rng)
        pruned = prune(base, space, pol, input_size=32)
        assert model_cost(pruned, size) == policy_cost(space, pol, size), pol


def test_mobilenet_v3_stem_cut_is_costed_as_pruned():
    """Issue 24: with the stem cut to 8 of 16 channels, the analytic model gave the projection
    of block 1 (which adds its input back, so reads and writes the stem's channels) 16 inputs;
    the pruned network has 8 (55,721,536 FLOPs costed, 54,730,304 counted)."""
    space = get_space("mobilenet_v3_large", num_classes=100)
    pol = {"stem": 0.45, "block2": 0.6, "stage1": 0.65, "block3": 0.3, "block4": 0.6,
           "stage2": 0.25, "block5": 0.4, "block6": 0.8, "block7": 0.8, "stage3": 0.1,
           "block8": 0.55, "block9": 0.5, "block10": 0.45, "block11": 0.65, "stage4": 0.25,
           "block12": 0.35, "block13": 1.0, "stage5": 0.3, "block14": 0.3, "block15": 0.2,
           "last": 0.3, "classifier": 0.2}
    assert space.channels(pol)["stem"] == 8
    pruned = prune_to_channels(space.build_model(), space, space.channels(pol), importance=None)
    shapes = {s.name: s for s in space.layers(space.channels(pol), 176)}
    proj = pruned.get_submodule("features.1.block.1.0")
    assert (shapes["features.1.block.1.0"].in_channels, proj.in_channels) == (8, 8)
    assert policy_cost(space, pol, 176) == model_cost(pruned, 176)


def test_pruned_runs_forward_backward_and_is_smaller():
    space = get_space("mobilenet_v2", width_mult=0.5, num_classes=10)
    base = space.build_model()
    before = [p.clone() for p in base.parameters()]
    pol = space.uniform(0.5)
    pruned = prune(base, space, pol)
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters())), "input mutated"
    out = pruned(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in base.parameters())
    ch = space.channels(pol)
    assert pruned.features[0][0].out_channels == ch["stem"]
    assert pruned.features[5].conv[0][0].out_channels == ch["block5"]
    assert pruned.classifier[1].in_features == ch["last"]


# Pruning == masking, for every importance criterion: tests/test_contracts.py.


def test_spec_roundtrip_identical_outputs(tmp_path):
    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    base = space.build_model()
    pol = random_policy(space, random.Random(5))
    pruned = prune(base, space, pol).eval()
    save_pruned(str(tmp_path / "model"), space, space.channels(pol), pruned)
    rebuilt, space2, spec = load_pruned(str(tmp_path / "model"))
    assert space2.config() == space.config()
    assert spec["channels"] == space.channels(pol)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))
    assert model_cost(rebuilt, 32) == channels_cost(space, spec["channels"], 32)
    # The spec is consistent with the layers it lists; a tampered spec is refused.
    bad = make_spec(space, space.channels(pol), pruned)
    bad["layers"]["features.0.0"] = [3, 999]
    with pytest.raises(ValueError, match="features.0.0"):
        build_from_spec(bad)


def test_latency_measurement_reports_median_and_spread():
    space = get_space("mobilenet_v2", width_mult=0.25, num_classes=10)
    lat = measure_latency(space.build_model(), 32, threads=1, warmup=2, repeats=5)
    assert lat.median_ms > 0 and lat.p10_ms <= lat.median_ms <= lat.p90_ms
    assert lat.threads == 1 and lat.repeats == 5 and lat.input_size == 32
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(space.build_model(), 32, repeats=1)
