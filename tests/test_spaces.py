from __future__ import annotations

import json
import random

import pytest

from prunetune.spaces import MobileNetV2Space, get_space, keep_channels, list_spaces, register_space

from conftest import random_policy


def test_registry_lists_and_rejects():
    assert "mobilenet_v2" in list_spaces()
    with pytest.raises(ValueError, match=r"valid names are \['mobilenet_v2'"):
        get_space("resnet_999")
    with pytest.raises(ValueError, match="registered already"):
        register_space("mobilenet_v2")(MobileNetV2Space)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 1.4])
def test_groups_match_torchvision(width):
    space = get_space("mobilenet_v2", width_mult=width, num_classes=7)
    model = space.build_model()
    names = space.group_names
    assert names[0] == "stem" and names[-1] == "last"
    # At width 0.25 the stem and stage1 both round to 8 channels, so features.1 adds its input:
    # one set of channels, one group (two would be costed apart but pruned together).
    tied = width <= 0.25
    assert sum(n.startswith("stage") for n in names) == 7 - tied
    stem = next(g for g in space.groups if g.name == "stem")
    assert ("features.1.conv.1" in stem.modules) == tied
    assert sum(n.startswith("block") for n in names) == 16
    for g in space.groups:
        for mod in g.modules:
            assert model.get_submodule(mod).out_channels == g.channels, (g.name, mod)
    # Residual-tied projections share one group: stage3 has three blocks.
    assert len(next(g for g in space.groups if g.name == "stage3").modules) == 3


def test_keep_channels_rounding():
    assert keep_channels(96, 0.5, 8) == 48
    assert keep_channels(96, 0.1, 8) == 8          # never below round_to
    assert keep_channels(96, 1.0, 8) == 96
    assert keep_channels(24, 0.7, 16) == 16
    assert keep_channels(8, 0.1, 8) == 8           # cannot prune a group of round_to channels
    space = get_space("mobilenet_v2", round_to=16)
    rng = random.Random(1)
    for _ in range(20):
        ch = space.channels(random_policy(space, rng))
        full = space.full_channels()
        assert all(ch[n] % 16 == 0 or ch[n] == full[n] for n in ch)
        assert all(16 <= ch[n] <= full[n] for n in ch)


def test_policy_validation_and_json_roundtrip():
    space = get_space("mobilenet_v2")
    pol = random_policy(space, random.Random(0))
    assert space.policy_from_json(space.policy_to_json(pol)) == pol
    assert json.loads(json.dumps(pol)) == pol
    bad = dict(pol, nonsense=0.5)
    with pytest.raises(ValueError, match=r"Unknown layer group.*nonsense.*valid names"):
        space.validate(bad)
    with pytest.raises(ValueError, match=r"must be in \[0.1, 1.0\], but got 1.5"):
        space.validate(dict(pol, stem=1.5))
    with pytest.raises(ValueError, match="misses group"):
        space.validate({k: v for k, v in pol.items() if k != "last"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        space.policy_from_json("{not json")


def test_space_bounds_are_configurable():
    space = get_space("mobilenet_v2", low=0.3, high=0.9, step=0.1)
    assert space.ratio_choices() == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    with pytest.raises(ValueError, match="low <= high"):
        get_space("mobilenet_v2", low=0.9, high=0.3)


def test_two_groups_on_one_set_of_coupled_channels_are_refused():
    from prunetune.spaces import ChannelGroup

    class Split(MobileNetV2Space):  # MobileNetV2's hand-written groups of before, at width 0.25
        @property
        def groups(self):
            return super().groups + (ChannelGroup("stage1", 8, "features.1.conv.1",
                                                  ("features.1.conv.1",)),)

    space = Split(width_mult=0.25, num_classes=10)
    with pytest.raises(ValueError, match="'stem' and 'stage1' are one set of coupled channels"):
        space.layers(space.full_channels(), 32)
