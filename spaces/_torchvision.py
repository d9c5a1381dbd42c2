"""Spaces over torchvision classification networks: ResNet-18/50 and MobileNetV3-Large.

Their channel groups are not written down: they are the sets of coupled channels that
Torch-Pruning's dependency graph finds (see :class:`SearchSpace`), named here.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import torch.nn as nn
from torchvision import models

from ._base import SearchSpace, keep_channels
from ._registry import register_space
from ._trace import Coupling, UnsupportedNetwork, counted_cost, shrink, slim


class TorchvisionSpace(SearchSpace):
    """A space over one torchvision classification builder, with a width multiplier.

    Args:
        width_mult: Width of the unpruned network relative to torchvision's (channels rounded
            to multiples of 8 as torchvision rounds them).
        num_classes: Classifier outputs.
        low, high, step, round_to: See :class:`SearchSpace`.
    """

    builder: Callable[..., nn.Module]
    native_width: bool = False  # the builder takes ``width_mult`` itself
    max_width: float = float("inf")

    def __init__(self, *, width_mult: float = 1.0, num_classes: int = 1000,
                 low: float = 0.1, high: float = 1.0, step: float = 0.05,
                 round_to: int = 8) -> None:
        super().__init__(low=low, high=high, step=step, round_to=round_to)
        self.check_width(width_mult)
        if width_mult > self.max_width:
            raise ValueError(f"`width_mult` of {self.name} must be at most {self.max_width:g}, "
                             f"but got {width_mult=}.")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, but got {num_classes=}.")
        self.width_mult, self.num_classes = width_mult, num_classes

    def config(self) -> dict[str, Any]:
        return {"width_mult": self.width_mult, "num_classes": self.num_classes,
                "low": self.low, "high": self.high, "step": self.step,
                "round_to": self.round_to}

    def build_model(self) -> nn.Module:
        builder = type(self).builder
        if self.native_width:
            return builder(width_mult=self.width_mult, num_classes=self.num_classes)
        model = builder(num_classes=self.num_classes)
        return slim(model, self.width_mult) if self.width_mult != 1.0 else model


class _ResNetSpace(TorchvisionSpace):
    """Groups of torchvision's ResNets.

    - ``layer1`` … ``layer4``: each stage's output width, tied by the residual adds across its
      blocks (and its downsample conv); in ResNet-18 ``layer1`` includes the stem ``conv1``,
      whose output is ``layer1``'s identity shortcut.
    - ``stem``: ``conv1`` where it is not tied (ResNet-50).
    - ``layerK.B.conv1`` (and ``layerK.B.conv2`` in bottlenecks): the inner widths of block B.

    ``width_mult`` below 1 slims every group (torchvision's ResNets have no width option).
    """

    max_width = 1.0

    def name_group(self, coupling: Coupling) -> str | None:
        if len(coupling.outputs) > 1:  # tied by residual adds: a stage width
            stage = next(o for o in coupling.outputs if o.startswith("layer"))
            return stage.split(".")[0]
        return "stem" if coupling.anchor == "conv1" else coupling.anchor


@register_space("resnet18")
class ResNet18Space(_ResNetSpace):
    __doc__ = _ResNetSpace.__doc__
    name = "resnet18"
    builder = staticmethod(models.resnet18)


@register_space("resnet50")
class ResNet50Space(_ResNetSpace):
    __doc__ = _ResNetSpace.__doc__
    name = "resnet50"
    builder = staticmethod(models.resnet50)


_V3_BLOCK = re.compile(r"features\.(\d+)\.block\.(\d+)\.0")


@register_space("mobilenet_v3_large")
class MobileNetV3LargeSpace(TorchvisionSpace):
    """Groups of torchvision's MobileNetV3-Large (hardswish, squeeze-excitation).

    - ``stem``: ``features.0`` (tied to block 1, whose residual adds its input).
    - ``stage1``, ``stage2``, …: each run of blocks of one output width, tied by residual adds.
    - ``block<i>``: the expanded (hidden) channels of ``features.<i>``, with its depthwise conv
      and the squeeze-excitation's gate; the squeeze width itself stays fixed.
    - ``last``: the final 1×1 conv; ``classifier``: the hidden linear layer of the head.
    """

    name = "mobilenet_v3_large"
    builder = staticmethod(models.mobilenet_v3_large)
    native_width = True

    def name_group(self, coupling: Coupling) -> str | None:
        a = coupling.anchor
        if a == "features.0.0":
            return "stem"
        if a.endswith(".fc1"):
            return None  # squeeze-excitation bottleneck: cheap, fixed as torchvision sizes it
        if a.startswith("classifier."):
            return "classifier"
        m = _V3_BLOCK.fullmatch(a)
        if m is None:
            return "last"
        if m.group(2) == "0":
            return f"block{m.group(1)}"
        projections = [c for c in self.network.couplings
                       if (p := _V3_BLOCK.fullmatch(c.anchor)) and p.group(2) != "0"]
        return f"stage{projections.index(coupling) + 1}"


class _AutoSpace(TorchvisionSpace):
    """A network grouped automatically; checked once per architecture when built: pruned to
    half width, its analytic cost must equal what FlopCounterMode counts."""

    max_width = 1.0
    _verified: set = set()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.arch_key not in _AutoSpace._verified:
            model = self.build_model()  # a builder's own errors are its own, not tracing's
            try:
                self._check_pruned_cost(model)
            except UnsupportedNetwork:
                raise
            except Exception as e:  # noqa: BLE001 - Torch-Pruning fails in many ways
                raise UnsupportedNetwork(f"{self.name}: Torch-Pruning cannot trace or prune it "
                                         f"({one_line(e)}).") from None
            _AutoSpace._verified.add(self.arch_key)

    def __reduce__(self) -> tuple:
        # The class is made at run time (auto_space), so pickle rebuilds it by name.
        return _auto_instance, (self.name, self.config())

    def _check_pruned_cost(self, model: nn.Module) -> None:
        channels = {g.name: keep_channels(g.channels, 0.5, self.round_to) for g in self.groups}
        model = shrink(model, {g.anchor: channels[g.name] for g in self.groups},
                       self.trace_size)
        got = counted_cost(model, self.trace_size)
        shapes = self.layers(channels, self.trace_size)
        want = (sum(s.macs for s in shapes), sum(s.params for s in shapes))
        if got != want:
            raise UnsupportedNetwork(
                f"{self.name}: pruned to half width it does {got[0]:,} MACs with {got[1]:,} "
                f"parameters, but the cost model predicts {want[0]:,} and {want[1]:,}; its "
                f"channels are coupled in a way the cost model does not follow (e.g. channel "
                f"splits or shuffles).")


def one_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, at most ``limit`` characters (errors of torch and
    Torch-Pruning often run to many lines; a refusal is one)."""
    first = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


@functools.cache
def auto_space(model_name: str) -> type[TorchvisionSpace] | None:
    """A space over any torchvision classification model, ``None`` for other names.

    Its groups are the network's sets of coupled channels, each named by its first layer
    (e.g. ``features.3.0``); ``width_mult`` slims structurally (at most 1). Networks the cost
    model cannot describe are refused, naming why, when the space is first used.
    """
    if model_name not in models.list_models(module=models):
        return None
    doc = (f"torchvision's {model_name}, grouped automatically from Torch-Pruning's "
           f"dependency graph (groups named by their first layer).")
    return type(f"Auto_{model_name}", (_AutoSpace,), {
        "name": model_name, "builder": staticmethod(functools.partial(models.get_model,
                                                                      model_name)),
        "__doc__": doc, "__module__": __name__})


def _auto_instance(name: str, config: dict[str, Any]) -> SearchSpace:
    from ._registry import get_space

    return get_space(name, **config)
