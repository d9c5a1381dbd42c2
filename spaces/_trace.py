"""What a network is made of, found by running it rather than written down by hand.

:func:`analyse` runs a model once and asks Torch-Pruning's dependency graph which channels
must go together. The result (:class:`Network`) is everything the cost model and the latency
table need: the conv/linear layers in the order they run, the BatchNorm after each, the sets
of coupled channels (residual adds, depthwise convs, squeeze-excitation products,
concatenations), and the spatial size of every layer at any input size (traced on the
``meta`` device: no compute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class LayerShape:
    """One conv or linear layer of a concrete network: the only input the cost model needs."""

    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    in_hw: tuple[int, int] = (1, 1)
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = False
    batchnorm: bool = False

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind == "linear":
            return (1, 1)
        return tuple(  # type: ignore[return-value]
            (s + 2 * self.padding - self.kernel) // self.stride + 1 for s in self.in_hw
        )

    @property
    def macs(self) -> int:
        """Multiply-accumulates for a batch of one (``FlopCounterMode`` counts 2 × this)."""
        if self.kind == "linear":
            return self.in_channels * self.out_channels
        h, w = self.out_hw
        return self.out_channels * h * w * (self.in_channels // self.groups) * self.kernel ** 2

    @property
    def params(self) -> int:
        """Parameters of the layer, plus its BatchNorm's weight and bias when it has one."""
        k = 1 if self.kind == "linear" else self.kernel ** 2
        n = self.out_channels * (self.in_channels // self.groups) * k
        return n + self.out_channels * (int(self.bias) + 2 * int(self.batchnorm))


@dataclass(frozen=True)
class Layer:
    """One conv or linear layer of the unpruned network, as it runs."""

    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = False
    batchnorm: str | None = None  # the BatchNorm2d that normalises this layer's output

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels \
            == self.out_channels

    def shape(self, in_channels: int, out_channels: int, in_hw: tuple[int, int]) -> LayerShape:
        """This layer with these channel counts (a depthwise conv keeps one group per
        channel) at input size ``in_hw``."""
        groups = in_channels if self.depthwise else self.groups
        return LayerShape(self.name, self.kind, in_channels, out_channels, in_hw, self.kernel,
                          self.stride, self.padding, groups, self.bias, self.batchnorm is not None)


@dataclass(frozen=True)
class Coupling:
    """Channels Torch-Pruning removes together: ``channels`` output channels of each of
    ``outputs`` (and their BatchNorms) and input channels of ``inputs`` (a layer may be in
    both; a depthwise conv, whose inputs are its outputs, only in ``outputs``).

    A layer that reads a concatenation one-to-one (a depthwise conv after ``torch.cat``, or a
    conv whose output is added to a concatenation) is in the ``outputs`` of each concatenated
    coupling: its channels are theirs side by side, and a coupling holds only its share."""

    anchor: str  # the first of ``outputs`` to run whose output channels are all in it
    channels: int
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]


class UnsupportedNetwork(ValueError):
    """A layer the analytic cost model cannot describe; the message names it and why."""


def out_pruner(module: nn.Module) -> Any:
    """Torch-Pruning's function that removes output channels of a conv or linear layer."""
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) \
        else tp.prune_conv_out_channels


def out_width(module: nn.Module) -> int:
    """Output channels of a conv, or output features of a linear layer."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return cast(nn.Conv2d, module).out_channels


def _example(model: nn.Module, input_size: int) -> torch.Tensor:
    p = next(model.parameters())
    return torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype)


def counted_cost(model: nn.Module, input_size: int) -> tuple[int, int]:
    """``(MACs, parameters)`` of ``model`` on one ``input_size`` image: MACs are half of what
    ``FlopCounterMode`` counts in eval mode."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(_example(model, input_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def dependency_graph(model: nn.Module, input_size: int = 64) -> Any:
    return tp.DependencyGraph().build_dependency(model, example_inputs=_example(model, input_size))


def _run_order(model: nn.Module, input_size: int) -> tuple[list[str], dict[str, str],
                                                          dict[str, tuple[int, int]]]:
    """Conv/linear layers in the order they run, the BatchNorm that reads each one's output,
    and each layer's input height and width at ``input_size``."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    hw: dict[str, tuple[int, int]] = {}
    bn_of: dict[str, str] = {}
    last_out: dict[int, str] = {}  # id(output tensor) -> layer name

    def pre(mod: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        name = names[mod]
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            if name not in hw:
                order.append(name)
                hw[name] = tuple(x.shape[-2:]) if isinstance(mod, nn.Conv2d) else (1, 1)
        elif isinstance(mod, nn.BatchNorm2d) and id(x) in last_out:
            bn_of.setdefault(last_out[id(x)], name)

    def post(mod: nn.Module, inputs: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            last_out[id(output)] = names[mod]

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            handles.append(m.register_forward_pre_hook(pre))
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_example(model, input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order, bn_of, hw


def _layer(name: str, layer: nn.Module, bn: str | None) -> Layer:
    if isinstance(layer, nn.Linear):
        return Layer(name, "linear", layer.in_features, layer.out_features,
                     bias=layer.bias is not None)
    mod = cast(nn.Conv2d, layer)  # the run order holds only conv and linear layers
    k, s, p, d = mod.kernel_size, mod.stride, mod.padding, mod.dilation
    if isinstance(p, str) or len({*k}) != 1 or len({*s}) != 1 or len({*p}) != 1 \
            or set(d) != {1}:
        raise UnsupportedNetwork(f"layer {name!r} has kernel {k}, stride {s}, padding {p}, "
                                 f"dilation {d}; the cost model supports square kernels, "
                                 f"strides and paddings without dilation.")
    if mod.groups > 1 and not (mod.groups == mod.in_channels == mod.out_channels):
        raise UnsupportedNetwork(f"layer {name!r} is a grouped conv ({mod.groups} groups) that "
                                 f"is not depthwise; only dense and depthwise convs can be "
                                 f"pruned here.")
    return Layer(name, "conv", mod.in_channels, mod.out_channels, k[0], s[0], p[0], mod.groups,
                 mod.bias is not None, bn)


@dataclass(frozen=True)
class Network:
    """The analysed structure of one architecture (see :func:`analyse`)."""

    layers: tuple[Layer, ...]
    couplings: tuple[Coupling, ...]  # in run order of their anchors; the head's output excluded
    head: str
    meta_model: nn.Module
    _hw: dict = field(default_factory=dict, compare=False, repr=False)

    def input_hw(self, input_size: int) -> dict[str, tuple[int, int]]:
        """Each layer's input height and width at ``input_size`` (traced on ``meta``)."""
        if input_size not in self._hw:
            self._hw[input_size] = _run_order(self.meta_model, input_size)[2]
        return self._hw[input_size]


# Ops of the forward that cut channels at sizes its code fixes (chunk: halves of whatever comes)
_FIXED_SPLITS = frozenset({tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.SLICE})


def _structure(model: nn.Module, input_size: int
               ) -> tuple[tuple[Layer, ...], tuple[Coupling, ...], str, Any]:
    mods = dict(model.named_modules())
    names = {m: n for n, m in mods.items()}
    order, bn_of, _ = _run_order(model, input_size)
    layers = tuple(_layer(n, mods[n], bn_of.get(n)) for n in order)
    by_name = {layer.name: layer for layer in layers}
    head = order[-1]
    rank = {n: i for i, n in enumerate(order)}
    dg = dependency_graph(model, input_size)
    couplings = []
    seen: set[str] = set()
    for name in order:
        if name in seen or name == head:
            continue
        mod = mods[name]
        n_out = out_width(mod)
        group = dg.get_pruning_group(mod, out_pruner(mod), idxs=list(range(n_out)))
        outs: dict[str, int] = {}  # layer -> how many of its output channels the group holds
        ins: dict[str, int] = {}  # layer -> how many of its input features
        split = False
        for dep, idxs in group:
            split |= dep.target.type in _FIXED_SPLITS
            target = names.get(dep.target.module)
            if target not in rank:
                continue
            side = outs if dep.handler.__name__ == "prune_out_channels" else ins
            side[target] = side.get(target, 0) + len(idxs)
        if head in outs:
            continue  # tied to the classes: cannot shrink
        # A layer can read and write the same channels (MobileNetV3's first block projects its
        # input back to its own width for the residual add): it is in both. A depthwise conv's
        # inputs are its outputs and counted once, as an output.
        reads = {i: n for i, n in ins.items() if not (i in outs and by_name[i].depthwise)}
        if any(n != n_out for n in outs.values()):
            # This layer's outputs are several couplings side by side (a depthwise conv after a
            # concatenation, a shortcut added to one): each is found from its own producer.
            continue
        if split or any(n % n_out for n in reads.values()):
            # The forward splits these channels (``torch.chunk``, ``torch.split``, a slice) at
            # sizes its code fixes, which Torch-Pruning cannot change: they stay whole.
            continue
        seen |= set(outs)
        couplings.append(Coupling(name, n_out, tuple(sorted(outs, key=rank.__getitem__)),
                                  tuple(sorted(reads, key=rank.__getitem__))))
    return layers, tuple(couplings), head, dg


def analyse(model: nn.Module, input_size: int = 64, name: str = "model") -> Network:
    """Run ``model`` (on the CPU) and read its layers and channel couplings.

    The classifier head is the last conv/linear layer to run; its output channels (the
    classes) are never pruned, nor are channels that the forward splits at sizes its code
    fixes (``torch.chunk``, ``torch.split``, slices: Torch-Pruning cannot change them).
    ``model`` is moved to the ``meta`` device afterwards (it is kept, without weights, to trace
    spatial sizes at other input sizes).

    Raises:
        UnsupportedNetwork: a network the cost model cannot describe: dilated or non-square
            convs, grouped convs that are not depthwise, compute outside conv/linear layers
            (``FlopCounterMode`` counts more), or parameters outside them and the BatchNorm
            after each.
    """
    layers, couplings, head, _ = _structure(model, input_size)
    model.to("meta").eval()
    net = Network(layers, couplings, head, model)
    hw = net.input_hw(input_size)
    shapes = [layer.shape(layer.in_channels, layer.out_channels, hw[layer.name])
              for layer in layers]
    counted, real = counted_cost(model, input_size)
    macs, params = sum(s.macs for s in shapes), sum(s.params for s in shapes)
    if macs != counted:
        raise UnsupportedNetwork(f"{name}: its conv and linear layers do {macs:,} of the "
                                 f"{counted:,} MACs FlopCounterMode counts at {input_size}px "
                                 f"(matrix products outside them, e.g. attention); the cost "
                                 f"model cannot describe it.")
    if params != real:
        raise UnsupportedNetwork(f"{name}: {real - params:,} of its {real:,} parameters are "
                                 f"outside conv/linear layers and the BatchNorm right after "
                                 f"each (e.g. a BatchNorm before a conv, LayerNorm); the cost "
                                 f"model cannot describe it.")
    return net


def shrink(model: nn.Module, keep: dict[str, int], input_size: int = 64, dg: Any = None
           ) -> nn.Module:
    """Keep the first ``keep[anchor]`` output channels of each anchor's coupled set, removing
    the rest from ``model`` in place (``dg``: the model's dependency graph, if built already)."""
    if dg is None:
        dg = dependency_graph(model, input_size)
    for anchor, k in keep.items():
        mod = model.get_submodule(anchor)
        n = out_width(mod)
        if k < n:
            dg.get_pruning_group(mod, out_pruner(mod), idxs=list(range(k, n))).prune()
    return model


def slim(model: nn.Module, width_mult: float, divisor: int = 8, input_size: int = 64
         ) -> nn.Module:
    """Shrink every set of coupled channels (not the classes) of ``model``, in place, to
    ``width_mult`` of its width, rounded as torchvision rounds widths (``_make_divisible``);
    the first channels are kept. How a space without a width option gets one."""
    from torchvision.models._utils import _make_divisible

    _, couplings, _, dg = _structure(model, input_size)
    return shrink(model, {c.anchor: min(c.channels, _make_divisible(c.channels * width_mult,
                                                                    divisor))
                          for c in couplings}, input_size, dg)
