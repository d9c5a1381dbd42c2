"""Small networks, one pattern of custom CNNs each (and one of them all), passed as module
instances (:class:`ModuleSpace`): each is grouped from Torch-Pruning's dependency graph and its
analytic cost is what ``FlopCounterMode`` counts of the pruned network, layer by layer, at two
input sizes, for the narrowest network and random policies (the first group cut in each).

The patterns: a concatenation read one-to-one (a depthwise conv after it; a shortcut added to
it, computed before or after the branches), channels split by ``torch.chunk``/``torch.split``,
a squeeze-excitation gate, a conv classifier (1x1 conv to the classes, then global pooling),
adaptive max pooling before a flatten, GELU/SiLU/Hardswish, nested ``nn.Sequential``.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

from prunetune.evaluators import channels_cost, model_cost, policy_cost, prune_to_channels
from prunetune.spaces import ModuleSpace

from conftest import random_policy
from test_space_contract import assert_costed_as_counted


def cba(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1,
        act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Conv, BatchNorm, activation."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


def dw(c: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return cba(c, c, 3, groups=c, act=act)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class Classifier(nn.Module):
    """Global average pooling and a linear layer."""

    def __init__(self, c: int, classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class CatDepthwise(nn.Module):
    """Two branches concatenated, then a depthwise conv and a 1x1 (issue 37's network)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = cba(3, 16, 3, 2), cba(16, 8), cba(16, 16, 3)
        self.dw, self.pw, self.head = dw(24), cba(24, 32), Classifier(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.pw(self.dw(torch.cat([self.a(x), self.b(x)], 1))))


class CatResidual(nn.Module):
    """A shortcut added to a concatenation: computed before the branches, then after them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cba(3, 16, 3, 2)
        self.sc1, self.a, self.b = cba(16, 24), cba(16, 8), cba(16, 16, 3)
        self.c, self.d, self.sc2 = cba(24, 16, 3), cba(24, 16), cba(24, 32)
        self.head = Classifier(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        short = self.sc1(x)
        x = torch.cat([self.a(x), self.b(x)], 1) + short
        x = torch.cat([self.c(x), self.d(x)], 1) + self.sc2(x)
        return self.head(x)


class Split(nn.Module):
    """Channels split by ``torch.chunk`` and by ``torch.split`` at fixed sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.c = cba(3, 16, 3, 2), cba(16, 32)
        self.a, self.b = cba(16, 16, 3), cba(16, 8)
        self.e, self.f = cba(8, 8, 3), cba(16, 16)
        self.head = Classifier(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = self.c(self.stem(x)).chunk(2, 1)
        x = torch.cat([self.a(p), self.b(q)], 1)
        u, v = torch.split(x, [8, 16], 1)
        return self.head(torch.cat([self.e(u), self.f(v)], 1))


class SEBlock(nn.Module):
    """Expand, depthwise, squeeze-excitation gate, project, plus the input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.expand, self.dw = cba(3, 16, 3, 2), cba(16, 32), dw(32)
        self.se = SqueezeExcite(32)
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = Classifier(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.project(self.se(self.dw(self.expand(x)))))


class ConvHead(nn.Module):
    """A 1x1 conv to the classes, then global average pooling: no linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cba(3, 16, 3, 2), cba(16, 24, 3))
        self.classifier = nn.Sequential(nn.Conv2d(24, 10, 1), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AdaptiveMax(nn.Module):
    """Adaptive max pooling to 1x1 inside, and to 2x2 before a flatten and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cba(3, 16, 3, 2), cba(16, 24, 3))
        self.gate = nn.Conv2d(24, 24, 1)
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(24 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x * torch.sigmoid(self.gate(nn.functional.adaptive_max_pool2d(x, 1)))
        return self.fc(self.pool(x).flatten(1))


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(cba(3, 16, 3, 2, act=nn.GELU), cba(16, 24, 3, act=nn.SiLU),
                                  dw(24, nn.Hardswish), cba(24, 16, act=nn.Hardswish))
        self.head = Classifier(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.gelu(self.body(x)))


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Sequential(cba(c, c, 3)), cba(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Nested(nn.Module):
    """``nn.Sequential`` inside ``nn.Sequential`` inside ``nn.Sequential``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Sequential(cba(3, 16, 3, 2)), Residual(16)),
            nn.Sequential(nn.Sequential(cba(16, 24, 3, 2), nn.Sequential(cba(24, 32)))))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Sequential(nn.Linear(32, 16), nn.ReLU()),
                                        nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CatBlock(nn.Module):
    """Branches concatenated, then depthwise (SiLU), squeeze-excitation and a projection added
    to a shortcut."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = cba(c, 8, act=nn.GELU), cba(c, 16, 3, act=nn.Hardswish)
        self.dw, self.se = dw(24, nn.SiLU), SqueezeExcite(24)
        self.project = nn.Sequential(nn.Conv2d(24, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        return x + self.project(self.se(self.dw(y)))


class Combined(nn.Module):
    """All of the above in one network."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cba(3, 16, 3, 2, act=nn.Hardswish)
        self.stage = nn.Sequential(nn.Sequential(CatBlock(16)), CatBlock(16))
        self.sc, self.c, self.d = cba(16, 32, act=nn.SiLU), cba(16, 16, 3), cba(16, 16)
        self.split = cba(32, 32, 3, 2)
        self.e, self.f = cba(16, 16), cba(16, 16, 3)
        self.classifier = nn.Sequential(nn.Conv2d(32, 10, 1), nn.AdaptiveMaxPool2d(1),
                                        nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(self.stem(x))
        short = self.sc(x)
        x = torch.cat([self.c(x), self.d(x)], 1) + short
        p, q = self.split(x).chunk(2, 1)
        return self.classifier(torch.cat([self.e(p), self.f(q)], 1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are tiny: a second thread only adds its synchronisation."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


PATTERNS = {cls.__name__: cls for cls in (CatDepthwise, CatResidual, Split, SEBlock, ConvHead,
                                          AdaptiveMax, Activations, Nested, Combined)}


def _space(name: str) -> ModuleSpace:
    torch.manual_seed(0)
    return ModuleSpace(PATTERNS[name](), trace_size=32, round_to=4)


def _settings(space: ModuleSpace, rng: random.Random) -> list[dict[str, int]]:
    """The narrowest network and three random policies, each with the first group (the stem
    or the first branch) cut to the lowest ratio."""
    first = space.group_names[0]
    out = [{g.name: space.round_to for g in space.groups}]
    for _ in range(3):
        pol = dict(random_policy(space, rng), **{first: space.low})
        out.append(space.channels(pol))
    return out


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_is_costed_as_counted(name):
    space = _space(name)
    assert space.groups and space.head not in {m for g in space.groups for m in g.modules}
    torch.manual_seed(1)
    base = space.build_model().eval()
    rng = random.Random(sum(map(ord, name)))
    for i, channels in enumerate(_settings(space, rng)):
        assert channels[space.group_names[0]] < space.groups[0].channels
        pruned = prune_to_channels(base, space, channels, importance="l1" if i else None)
        for size in (32, 48):
            assert_costed_as_counted(space, pruned, channels, size)
        assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    pol = random_policy(space, rng)
    assert policy_cost(space, pol, 48) == channels_cost(space, space.channels(pol), 48)


def test_a_depthwise_conv_after_a_concatenation_has_both_branches_channels():
    """Issue 37: each branch is a group, and the depthwise conv after the concatenation is in
    both (it runs a's kept channels + b's, one group per channel); it was costed with b's
    alone, and the space refused at its half-width check."""
    space = _space("CatDepthwise")
    groups = {g.anchor: g for g in space.groups}
    assert "dw.0" in groups["a.0"].modules and "dw.0" in groups["b.0"].modules
    assert "dw.0" not in groups  # its channels are the branches', side by side
    channels = dict(space.full_channels(), **{"a.0": 4, "b.0": 12})
    shapes = {s.name: s for s in space.layers(channels, 32)}
    assert (shapes["dw.0"].in_channels, shapes["dw.0"].out_channels, shapes["dw.0"].groups) \
        == (16, 16, 16)
    assert shapes["pw.0"].in_channels == 16
    pruned = prune_to_channels(space.build_model(), space, channels, importance="l1")
    assert model_cost(pruned, 32) == channels_cost(space, channels, 32)


def test_a_shortcut_added_to_a_concatenation_is_cut_with_its_branches():
    """A shortcut computed before the branches runs first, yet it is not a group of its own
    (its channels are both branches'): each branch's group holds its share of it."""
    space = _space("CatResidual")
    groups = {g.anchor: g for g in space.groups}
    assert {"a.0", "b.0", "c.0", "d.0"} <= set(groups) and not {"sc1.0", "sc2.0"} & set(groups)
    assert all(s in groups[b].modules for s, bs in (("sc1.0", "ab"), ("sc2.0", "cd"))
               for b in (f"{bs[0]}.0", f"{bs[1]}.0"))


def test_channels_split_at_fixed_sizes_stay_whole():
    """``torch.chunk`` and ``torch.split`` cut at sizes the forward fixes (halves; 8 and 16),
    which Torch-Pruning cannot change: the channels that reach a split (``c``'s, and the
    concatenation of ``a``'s and ``b``'s) are no group; those of the convs after it are."""
    space = _space("Split")
    assert {g.anchor for g in space.groups} == {"stem.0", "e.0", "f.0"}
    narrow = prune_to_channels(space.build_model(), space,
                               {g.name: space.round_to for g in space.groups}, importance=None)
    assert [narrow.get_submodule(n).out_channels for n in ("c.0", "a.0", "b.0", "e.0")] \
        == [32, 16, 8, 4]
