"""The space contract: every registered space passes these checks, or it does not merge.

Each space runs at a tiny width (0.25, 10 classes) and 32×32 inputs, like the rest of the suite.
A new space needs no new test here: registering it adds it to every check.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from prunetune.evaluators import (FinetuneConfig, build_latency_table, channels_cost,
                                  load_data, load_into, load_pruned, model_cost, policy_cost,
                                  prune, prune_to_channels, removal_plan, save_pruned)
from prunetune.search import repair, uniform_at_budget
from prunetune.search._final import finalize
from prunetune.spaces import get_space, list_spaces

from conftest import masked_copy, random_policy

SPACES = list_spaces()


@pytest.fixture(scope="module", params=SPACES)
def space(request):
    return get_space(request.param, width_mult=0.25, num_classes=10)


@pytest.fixture(scope="module")
def base(space):
    torch.manual_seed(0)
    model = space.build_model().eval()
    for m in model.modules():  # non-trivial BN statistics so that every channel matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.2, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_all_networks_are_registered():
    assert {"mobilenet_v2", "mobilenet_v3_large", "resnet18", "resnet50"} <= set(SPACES)


def test_groups_are_the_networks_coupled_channels(space, base):
    names = space.group_names
    assert len(names) == len(set(names)) >= 4
    couplings = {c.anchor: c for c in space.network.couplings}
    for g in space.groups:
        anchor = base.get_submodule(g.anchor)
        width = anchor.out_features if isinstance(anchor, nn.Linear) else anchor.out_channels
        assert width == g.channels, g
        assert g.anchor in {o for c in couplings.values() for o in c.outputs}, g
    # The classes are never a group; the head is the last layer and outputs the classes.
    head = base.get_submodule(space.head)
    assert isinstance(head, nn.Linear) and head.out_features == 10
    assert all(space.head not in g.modules for g in space.groups)
    # The config rebuilds the same space.
    again = get_space(space.name, **space.config())
    assert again.config() == space.config() and again.group_names == names


def cut_every_group(space, rng: random.Random) -> dict[str, int]:
    """Channels per group, each a multiple of ``round_to`` strictly below the group's width."""
    r = space.round_to
    return {g.name: r * rng.randint(1, (g.channels - 1) // r) for g in space.groups}


def counted_layers(model: nn.Module, space, size: int
                   ) -> tuple[dict[str, tuple[int, int, int, int]], int]:
    """Per conv/linear layer of ``model``: ``(in, out, FLOPs, params)``, the FLOPs as
    ``FlopCounterMode`` counts them in that module on one ``size`` image, the params its own
    and those of the BatchNorm the analysis found after it; and the FLOPs of the whole run."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, size, size))
    by_module = {k.split(".", 1)[1]: sum(v.values())  # "MobileNetV3.features.0.0" -> ...
                 for k, v in counter.get_flop_counts().items() if "." in k}
    out = {}
    for layer in space.network.layers:
        mod = model.get_submodule(layer.name)
        params = sum(p.numel() for p in mod.parameters())
        if layer.batchnorm:
            params += sum(p.numel() for p in model.get_submodule(layer.batchnorm).parameters())
        cin, cout = (mod.in_features, mod.out_features) if isinstance(mod, nn.Linear) \
            else (mod.in_channels, mod.out_channels)
        out[layer.name] = (cin, cout, by_module.get(layer.name, 0), params)
    return out, counter.get_total_flops()


def assert_costed_as_counted(space, pruned: nn.Module, channels: dict[str, int],
                             size: int) -> None:
    """The analytic shapes of ``channels`` are ``pruned``'s, layer by layer (channels, FLOPs,
    parameters), and in total (every FLOP ``FlopCounterMode`` counts, every parameter)."""
    want = {s.name: (s.in_channels, s.out_channels, 2 * s.macs, s.params)
            for s in space.layers(channels, size)}
    got, flops = counted_layers(pruned, space, size)
    wrong = {n: {"costed": want[n], "counted": got[n]} for n in want if want[n] != got[n]}
    assert not wrong, (size, channels, wrong)  # per layer: (in, out, FLOPs, params)
    cost = channels_cost(space, channels, size)
    assert (cost.flops, cost.params) == (flops, sum(p.numel() for p in pruned.parameters()))


@pytest.fixture(scope="module")
def fine_space(space):
    """``space`` keeping multiples of 4 channels: at width 0.25 some groups (MobileNetV3's
    stem) have 8 channels, which multiples of 8 never cut."""
    return get_space(space.name, **dict(space.config(), round_to=4))


def test_analytic_cost_equals_flop_counter_layer_by_layer(fine_space, base):
    """Every group cut below its full width (the narrowest network, random cuts, a random
    policy), every conv/linear layer's channels, FLOPs and parameters as the pruned network
    has them, at three input sizes (an odd one included)."""
    space, rng = fine_space, random.Random(0)
    cuts = [{g.name: space.round_to for g in space.groups}] + [
        cut_every_group(space, rng) for _ in range(2)]
    pol = random_policy(space, rng)
    assert all(ch[g.name] < g.channels for ch in cuts for g in space.groups)
    for channels in [space.full_channels(), *cuts, space.channels(pol)]:
        pruned = prune_to_channels(base, space, channels, importance=None)
        for size in (32, 37, 48):
            assert_costed_as_counted(space, pruned, channels, size)
    assert policy_cost(space, pol, 48) == channels_cost(space, space.channels(pol), 48)
    assert policy_cost(space, space.uniform(space.low), 32).macs < \
        policy_cost(space, space.uniform(1.0), 32).macs


def test_pruning_equals_masking(space, base):
    """The pruned network computes what the dense one computes with the removed channels cut
    off (their consumers' input weights zeroed)."""
    channels = space.channels(random_policy(space, random.Random(3)))
    plan = removal_plan(base, space, channels, "l1")
    assert plan, "the policy should remove something"
    masked = masked_copy(base, space, plan)
    pruned = prune_to_channels(base, space, channels, "l1").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b, dense = pruned(x), masked(x), base(x)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, dense, atol=1e-3), "masking must change the output"


def test_spec_roundtrip(space, base, tmp_path):
    pol = random_policy(space, random.Random(5))
    pruned = prune(base, space, pol).eval()
    save_pruned(str(tmp_path / "model"), space, space.channels(pol), pruned)
    rebuilt, space2, spec = load_pruned(str(tmp_path / "model"))
    assert space2.name == space.name and space2.config() == space.config()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))
    assert model_cost(rebuilt, 32) == channels_cost(space, spec["channels"], 32)


def test_checkpoint_with_other_class_count_loads_with_a_new_head(space, base):
    other = get_space(space.name, width_mult=0.25, num_classes=7).build_model()
    notes = load_into(other, base.state_dict(), "ckpt", space.head)
    assert "resized from 10 to 7" in notes[0]


def test_latency_table_finds_every_layer_slot(space):
    table = build_latency_table(space, 32, grid_points=2, repeats=1, calibrate=2,
                                log=lambda s: None)
    layers = space.layers(space.full_channels(), 32)
    assert set(table.slots) == {l.name for l in layers}
    # Each slot's axes follow the groups that set the layer's channels.
    for l in space.layers(space.channels(space.uniform(0.5)), 32):
        s = table.slots[l.name]
        if s["cout"] is not None and s["out_group"]:
            assert min(s["cout"]) <= l.out_channels <= max(s["cout"]), l
    for pol in (space.uniform(1.0), space.uniform(0.3)):
        ms = table.predict(space, pol)
        assert math.isfinite(ms) and ms > 0


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_budget_repair_lands_under_the_budget(space, fraction):
    limit = fraction * policy_cost(space, space.uniform(1.0), 32).flops
    rng = random.Random(int(fraction * 10))
    for _ in range(3):
        pol, _ = repair(space, random_policy(space, rng), {"flops": limit}, 32)
        flops = policy_cost(space, pol, 32).flops
        assert 0.8 * limit <= flops <= limit, (flops, limit)
    uni = uniform_at_budget(space, {"flops": limit}, 32)
    assert len(set(uni.values())) == 1 and policy_cost(space, uni, 32).flops <= limit


def test_final_finetune_export_and_reload(space, base, cifar_dir, tmp_path):
    data = load_data(cifar_dir, per_class=8, test_per_class=4, seed=0)
    pol = space.uniform(0.5)
    channels = space.channels(pol)
    record = {"trial": 0, "policy": pol, "channels": channels, "accuracy": 0.0,
              "flops": channels_cost(space, channels, 32).flops}
    summary = finalize(record, space, base.train(), data,
                       FinetuneConfig(epochs=1, batch_size=16), str(tmp_path), importance="l1",
                       bn_batches=1, deploy_size=32, latency_threads=1, do_export=True,
                       log=lambda s: None)
    base.eval()
    assert summary["exported"].endswith(".onnx") and 0.0 <= summary["test_acc"] <= 1.0
    model, space2, _ = load_pruned(str(tmp_path / "model"))
    assert model_cost(model, 32).flops == summary["flops"]
    saved = json.load(open(tmp_path / "summary.json"))
    assert saved["channels"] == channels and space2.group_names == space.group_names


# -- any torchvision classification network by name (grouped automatically) ------------------
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "squeezenet1_0"])
def test_any_torchvision_network_by_name_is_grouped_and_costed(name, tmp_path):
    """Not registered, built by name: the groups come from the dependency graph (SqueezeNet's
    concatenated expand convs included) and the analytic cost holds, layer by layer, with
    every group cut."""
    import pickle

    assert name not in SPACES
    space = get_space(name, width_mult=0.25, num_classes=10, round_to=4)
    assert len(space.group_names) >= 10 and space.head
    again = pickle.loads(pickle.dumps(space))  # made at run time, yet picklable (Ray)
    assert again.config() == space.config() and again.group_names == space.group_names
    base = space.build_model()
    rng = random.Random(7)
    for channels in ({g.name: 4 for g in space.groups}, cut_every_group(space, rng)):
        pruned = prune_to_channels(base, space, channels, importance=None)
        assert_costed_as_counted(space, pruned, channels, 48)
    pol = random_policy(space, rng)
    pruned = prune(base, space, pol, input_size=32)
    assert model_cost(pruned, 64) == policy_cost(space, pol, 64), pol
    save_pruned(str(tmp_path / "m"), space, space.channels(pol), pruned)
    rebuilt, space2, _ = load_pruned(str(tmp_path / "m"))
    assert space2.name == name
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned.eval()(x))


@pytest.mark.parametrize("name,reason", [
    ("resnext50_32x4d", r"grouped conv \(32 groups\) that is not depthwise"),
    ("densenet121", r"parameters are outside conv/linear layers"),
    ("shufflenet_v2_x0_5", r"Torch-Pruning cannot trace or prune it"),
])
def test_networks_the_cost_model_cannot_describe_are_refused(name, reason):
    from prunetune.spaces import UnsupportedNetwork

    with pytest.raises(UnsupportedNetwork, match=f"{name}|{reason}") as e:
        get_space(name, num_classes=10).groups
    assert e.match(reason)


def test_unknown_name_lists_the_spaces():
    with pytest.raises(ValueError, match=r"valid names are \['mobilenet_v2'.*torchvision"):
        get_space("resnet_999")


def test_residual_projection_that_reads_its_own_group_is_costed():
    """MobileNetV3's first block adds its input to dw → project: the project conv writes *and*
    reads the stem's channels. At width 1 the stem (16) is prunable; the cost model once kept
    the project conv's inputs at 16 and predicted 65,536 MACs too many at 64px."""
    from prunetune.spaces import counted_cost
    from prunetune.spaces._trace import shrink

    space = get_space("mobilenet_v3_large", num_classes=10)
    channels = space.channels(space.uniform(0.5))
    assert channels["stem"] == 8
    model = shrink(space.build_model(), {g.anchor: channels[g.name] for g in space.groups}, 32)
    shapes = space.layers(channels, 32)
    assert counted_cost(model, 32) == (sum(s.macs for s in shapes), sum(s.params for s in shapes))
