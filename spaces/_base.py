"""What may be pruned: channel groups, policies and the layer shapes a policy implies."""

from __future__ import annotations

import abc
import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn as nn

from ._trace import Coupling, LayerShape, Network, analyse

Policy = dict[str, float]
"""Keep-ratio per channel group, e.g. ``{"stage3": 0.5, "block7": 0.75, ...}``."""


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together.

    Attributes:
        name: The policy key.
        channels: Channel count in the unpruned network.
        anchor: Module name of a conv whose output channels are this group; Torch-Pruning's
            dependency graph follows the coupling (residual adds, depthwise convs, BN) from it.
        modules: Every conv some of whose output channels belong to the group (all of them but
            for a layer that reads a concatenation one-to-one, e.g. a depthwise conv after
            ``torch.cat``, which is in each concatenated group; documentation and checks).
    """

    name: str
    channels: int
    anchor: str
    modules: tuple[str, ...]


def keep_channels(base: int, ratio: float, round_to: int) -> int:
    """Channels kept from ``base`` at ``ratio``: a multiple of ``round_to``, at least ``round_to``.

    A layer that would keep all (or more than all) of its channels stays unpruned at ``base``.
    """
    if ratio >= 1.0 or base <= round_to:
        return base
    kept = max(round_to, int(math.floor(base * ratio / round_to + 0.5)) * round_to)
    return min(kept, base)


_NETWORKS: dict[tuple, Network] = {}  # one analysis per architecture and process


class SearchSpace(abc.ABC):
    """A per-group keep-ratio space over one architecture.

    The contract: a subclass says how to build the unpruned network (:meth:`build_model`) and
    which constructor arguments rebuild the space (:meth:`config`). Everything else is found by
    running the network once (:attr:`network`): the layers, their shapes at any input size
    (:meth:`layers`, the analytic cost model's only input), the classifier head, and the sets
    of channels that must shrink together. Each such set becomes a channel group named by
    :meth:`name_group` (``None`` keeps it at full width); a subclass may instead list its
    groups itself (:attr:`groups`), and each must then be one of those sets.
    """

    name: str = ""
    trace_size: int = 64  # input size at which the network is run to find its structure
    prune_size: int = 32  # input size at which pruning traces it (any size it runs at)

    def __init__(self, *, low: float = 0.1, high: float = 1.0, step: float = 0.05,
                 round_to: int = 8) -> None:
        self.check_bounds(low, high, step, round_to)
        self.low, self.high, self.step, self.round_to = low, high, step, round_to

    @staticmethod
    def check_bounds(low: float, high: float, step: float, round_to: int) -> None:
        """The keep-ratio range every space takes: ``0 < low <= high <= 1``, ``step`` in
        (0, 1] and ``round_to`` >= 1 (what the command line checks its ``--low``, ``--high``,
        ``--step`` and ``--round-to`` with, before a space is made).

        Raises:
            ValueError: naming the option (``--low``, ...), the value and the rule.
        """
        for name, v in (("low", low), ("high", high), ("step", step)):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"--{name} must be in (0, 1], but got {v}.")
        if low > high:
            raise ValueError(f"--low {low} is above --high {high}: the keep-ratios must "
                             f"satisfy low <= high; give a smaller --low.")
        if round_to < 1:
            raise ValueError(f"--round-to must be >= 1, but got {round_to}.")

    @staticmethod
    def check_width(width_mult: float) -> None:
        """The width multiplier every space of a network's family takes: positive (what the
        command line checks its ``--width`` with; a family may cap it, see ``max_width``).

        Raises:
            ValueError: naming ``--width``, the value and the rule.
        """
        if not width_mult > 0:
            raise ValueError(f"--width must be positive, but got {width_mult}.")

    # -- what subclasses define ----------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The unpruned network (random weights)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this space with :func:`spaces.get_space`."""

    def name_group(self, coupling: Coupling) -> str | None:
        """The policy key of a set of coupled channels, or ``None`` to keep it unpruned."""
        return coupling.anchor

    @property
    def weights_name(self) -> str:
        """The torchvision model whose pretrained weights fit this space (``--weights``)."""
        return self.name

    # -- found by running the network ----------------------------------------------------------
    @property
    def arch_key(self) -> tuple:
        """What identifies the unpruned architecture: the class, the name and the options of
        :meth:`config` other than the keep-ratio range and the channel multiple."""
        arch = {k: v for k, v in self.config().items()
                if k not in ("low", "high", "step", "round_to")}
        return type(self), self.name, json.dumps(arch, sort_keys=True)

    @property
    def network(self) -> Network:
        """The analysed unpruned network (one analysis per architecture, shared)."""
        key = self.arch_key
        if key not in _NETWORKS:
            _NETWORKS[key] = analyse(self.build_model(), self.trace_size, self.name)
        return _NETWORKS[key]

    @property
    def head(self) -> str:
        """Module name of the classifier (the last layer to run); its outputs are the classes."""
        return self.network.head

    @functools.cached_property
    def groups(self) -> tuple[ChannelGroup, ...]:
        """The channel groups, in network order."""
        out = []
        for c in self.network.couplings:
            name = self.name_group(c)
            if name is not None:
                out.append(ChannelGroup(name, c.channels, c.anchor, c.outputs))
        names = [g.name for g in out]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"space {self.name!r} names two channel groups {dup}; "
                             f"name_group must give each coupling its own name.")
        return tuple(out)

    @functools.cached_property
    def _owners(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...], int]]:
        """Per layer: the groups whose channels it reads (several where outputs are
        concatenated), the groups whose channels it writes (none: fixed; several where it
        continues a concatenation one-to-one, e.g. a depthwise conv after ``torch.cat``), and
        how many input features each read channel is (a linear layer after a flatten reads
        h·w per channel). A depthwise conv reads what it writes."""
        layers = {layer.name: layer for layer in self.network.layers}
        # the layers whose outputs are all one coupling's (not shared with a concatenation)
        by_output = {o: c for c in self.network.couplings for o in c.outputs
                     if layers[o].out_channels == c.channels}
        ins: dict[str, list[str]] = {n: [] for n in layers}
        outs: dict[str, list[str]] = {n: [] for n in layers}
        claimed: dict[str, str] = {}  # coupling anchor -> group
        for g in self.groups:
            c = by_output.get(g.anchor)
            if c is None or c.channels != g.channels:
                raise ValueError(f"space {self.name!r}: group {g.name!r} (anchor {g.anchor!r}, "
                                 f"{g.channels} channels) is not a set of coupled channels of "
                                 f"the network; anchor it on a layer whose outputs can shrink.")
            if c.anchor in claimed:
                raise ValueError(f"space {self.name!r}: groups {claimed[c.anchor]!r} and "
                                 f"{g.name!r} are one set of coupled channels ({c.outputs}); "
                                 f"give it one group.")
            claimed[c.anchor] = g.name
            for o in c.outputs:
                outs[o].append(g.name)
            for i in c.inputs:
                ins[i].append(g.name)
        full = self.full_channels()
        owners = {}
        for n, layer in layers.items():
            if layer.depthwise:
                ins[n] = list(outs[n])
            read = sum(full[g] for g in ins[n])
            per = layer.in_channels // read if layer.kind == "linear" and read and \
                layer.in_channels % read == 0 else 1
            owners[n] = (tuple(ins[n]), tuple(outs[n]), per)
        return owners

    def layers(self, channels: Mapping[str, int], input_size: int) -> list[LayerShape]:
        """Every conv and linear layer of the network with these group channel counts, in the
        order they run: each loses the channels its groups lose (a layer after a concatenation
        those of every concatenated group)."""
        hw = self.network.input_hw(input_size)
        full = self.full_channels()
        out = []
        for layer in self.network.layers:
            gins, gouts, per = self._owners[layer.name]
            cin = layer.in_channels + per * sum(channels[g] - full[g] for g in gins)
            cout = layer.out_channels + sum(channels[g] - full[g] for g in gouts)
            out.append(layer.shape(cin, cout, hw[layer.name]))
        return out

    # -- shared --------------------------------------------------------------------------------
    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def full_channels(self) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups}

    def validate(self, policy: Mapping[str, Any]) -> Policy:
        """Check a policy and return it as a plain ``dict[str, float]`` in group order.

        Raises:
            ValueError: An unknown or missing group, a non-number, or a ratio outside
                ``[low, high]``; the message lists the valid names or range.
        """
        if not isinstance(policy, Mapping):
            raise ValueError(f"A policy must be a mapping of group name to keep-ratio, "
                             f"but got {type(policy).__name__}.")
        names = self.group_names
        unknown = sorted(set(policy) - set(names))
        if unknown:
            raise ValueError(f"Unknown layer group(s) {unknown} for space {self.name!r}; "
                             f"valid names are {names}.")
        missing = [n for n in names if n not in policy]
        if missing:
            raise ValueError(f"Policy misses group(s) {missing}; give a keep-ratio for each of "
                             f"{names}.")
        out: Policy = {}
        for n in names:
            r = policy[n]
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
                raise ValueError(f"Keep-ratio for {n!r} must be a number, but got {r!r}.")
            if not self.low - 1e-9 <= r <= self.high + 1e-9:
                raise ValueError(f"Keep-ratio for {n!r} must be in [{self.low}, {self.high}], "
                                 f"but got {r}.")
            out[n] = float(r)
        return out

    def channels(self, policy: Mapping[str, Any]) -> dict[str, int]:
        """Channel count per group for a (validated) policy."""
        policy = self.validate(policy)
        return {g.name: keep_channels(g.channels, policy[g.name], self.round_to)
                for g in self.groups}

    def uniform(self, ratio: float) -> Policy:
        """The policy with every keep-ratio equal to ``ratio``."""
        return self.validate({n: ratio for n in self.group_names})

    def ratio_choices(self) -> list[float]:
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 6) for i in range(n + 1)]

    def suggest(self, trial: Any) -> Policy:
        """Sample a policy with an Optuna trial (define-by-run), one float per group."""
        return {n: trial.suggest_float(n, self.low, self.high, step=self.step)
                for n in self.group_names}

    def policy_to_json(self, policy: Mapping[str, Any]) -> str:
        return json.dumps(self.validate(policy), indent=2, sort_keys=False)

    def policy_from_json(self, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"A policy must be a JSON object; parsing failed: {e}.") from None
        return self.validate(data)
