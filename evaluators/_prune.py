"""Structural pruning through Torch-Pruning's dependency graph, and pruned-model specs.

A pruned network is stored as a small JSON spec (the space, its config and the channel count
of every group and layer) plus a ``state_dict``; :func:`build_from_spec` rebuilds it without
the original model by pruning a fresh skeleton to the spec's shape and loading the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import weakref
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch_pruning as tp

from prunetune._registry import Registry
from prunetune.spaces import SearchSpace, get_space, out_pruner, out_width

from ._data import ImageData
from ._train import taylor_gradients

# Importance criteria by name. Each maps a Torch-Pruning group to one score per channel.
IMPORTANCES: Registry[Callable[[], Any]] = Registry("importance", {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    # First-order Taylor, |w * dL/dw| summed over a group (Molchanov et al. 2019): needs the
    # gradients of the unpruned model (evaluators.taylor_gradients), passed as ``grads``.
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
})
NEEDS_GRADIENTS = frozenset({"taylor"})
# The last base's gradients, reused across candidates: [(weights token, seed), data, grads].
# Keyed by the weights' content, not id(base): a worker rebuilds the base for every trial (an
# id would rarely match), and a freed base's id can be reused by another network.
_GRADS_CACHE: list = []


def weights_token(model: nn.Module) -> str:
    """A digest of ``model``'s state: every parameter and buffer with its name, shape, dtype
    and device. Two copies of one network have the same token; a changed value changes it."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{t.device}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def importance_gradients(importance: str | None, base: nn.Module, data: ImageData,
                         seed: int = 0) -> dict[str, torch.Tensor] | None:
    """The ``grads`` that :func:`prune_to_channels` needs for ``importance``: None for criteria
    that do not use gradients, else :func:`taylor_gradients` of ``base``, computed once per
    base weights (:func:`weights_token`), data object and seed and reused for every candidate
    pruned from it."""
    if importance not in NEEDS_GRADIENTS:
        return None
    key = (weights_token(base), seed)
    if not (_GRADS_CACHE and _GRADS_CACHE[0][0] == key and _GRADS_CACHE[0][1]() is data):
        _GRADS_CACHE[:] = [(key, weakref.ref(data), taylor_gradients(base, data, seed=seed))]
    return _GRADS_CACHE[0][2]


def _importance(name: str) -> Any:
    if name not in IMPORTANCES:
        raise ValueError(f"Unknown importance {name!r}; valid names are {sorted(IMPORTANCES)}.")
    return IMPORTANCES[name]()


def removal_plan(model: nn.Module, space: SearchSpace, channels: Mapping[str, int],
                 importance: str | None = "l1", dg: Any = None, input_size: int = 32
                 ) -> dict[str, list[int]]:
    """Which output channels of each group's anchor to remove, ranked on the unpruned model.

    All groups are ranked before any is pruned, so the plan does not depend on group order.
    ``importance=None`` removes the last channels (used to shape a skeleton).
    """
    if dg is None:
        dg = _graph(model, input_size)
    imp = _importance(importance) if importance is not None else None
    plan: dict[str, list[int]] = {}
    for group in space.groups:
        anchor = model.get_submodule(group.anchor)
        n, k = out_width(anchor), int(channels[group.name])
        if not 0 < k <= n:
            raise ValueError(f"Group {group.name!r} has {n} channels; cannot keep {k}.")
        if k == n:
            continue
        if imp is None:
            plan[group.name] = list(range(k, n))
            continue
        full = dg.get_pruning_group(anchor, out_pruner(anchor), idxs=list(range(n)))
        with torch.no_grad():
            scores = imp(full)
        plan[group.name] = sorted(torch.argsort(scores, stable=True)[: n - k].tolist())
    return plan


def _graph(model: nn.Module, input_size: int) -> Any:
    p = next(model.parameters())
    example = torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype)
    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def prune_to_channels(model: nn.Module, space: SearchSpace, channels: Mapping[str, int],
                      importance: str | None = "l1", input_size: int | None = None,
                      inplace: bool = False,
                      grads: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Remove channels so that each group of ``space`` keeps ``channels[group]`` of them.

    Args:
        model: A network of ``space``'s architecture (unpruned).
        channels: Channels to keep per group (see :meth:`SearchSpace.channels`).
        importance: Criterion ranking channels within a group (``l1``, ``l2``, ``bn_scale``);
            ``None`` keeps the first channels (used to shape a skeleton before loading weights).
        input_size: Size of the example input used to trace the dependency graph
            (default: the space's :attr:`~SearchSpace.prune_size`).
        inplace: Prune ``model`` itself instead of a copy.
        grads: Gradients of the unpruned model by parameter name, for criteria that rank with
            them (``taylor``; see :func:`taylor_gradients`).

    Returns:
        A physically smaller module; the input model is untouched unless ``inplace``.
    """
    m = model if inplace else copy.deepcopy(model)
    if importance in NEEDS_GRADIENTS:
        if grads is None:
            raise ValueError(f"importance {importance!r} ranks channels by weight x gradient; "
                             f"pass grads=taylor_gradients(model, data).")
        for name, p in m.named_parameters():
            p.grad = grads[name].clone() if name in grads else None
    was_training = m.training
    m.eval()
    dg = _graph(m, input_size or space.prune_size)
    plan = removal_plan(m, space, channels, importance, dg)
    for group in space.groups:
        if group.name in plan:
            anchor = m.get_submodule(group.anchor)
            dg.get_pruning_group(anchor, out_pruner(anchor), idxs=plan[group.name]).prune()
    if importance in NEEDS_GRADIENTS:
        m.zero_grad(set_to_none=True)
    m.train(was_training)
    return m


def prune(model: nn.Module, space: SearchSpace, policy: Mapping[str, float],
          importance: str = "l1", input_size: int | None = None) -> nn.Module:
    """Prune a copy of ``model`` to ``policy`` (group → keep-ratio). See :func:`prune_to_channels`."""
    return prune_to_channels(model, space, space.channels(policy), importance, input_size)


def layer_channels(model: nn.Module) -> dict[str, list[int]]:
    """``[in, out]`` channels (features for linear layers) of every conv and linear layer."""
    out: dict[str, list[int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            out[name] = [mod.in_channels, mod.out_channels]
        elif isinstance(mod, nn.Linear):
            out[name] = [mod.in_features, mod.out_features]
    return out


def make_spec(space: SearchSpace, channels: Mapping[str, int], model: nn.Module | None = None
              ) -> dict[str, Any]:
    """The JSON-able architecture spec of a pruned network."""
    spec: dict[str, Any] = {"space": space.name, "config": space.config(),
                            "channels": {g: int(channels[g]) for g in space.group_names}}
    if model is not None:
        spec["layers"] = layer_channels(model)
    return spec


def build_from_spec(spec: Mapping[str, Any]) -> tuple[nn.Module, SearchSpace]:
    """An untrained network shaped as ``spec`` (load its ``state_dict`` next)."""
    space = get_space(spec["space"], **spec["config"])
    model = prune_to_channels(space.build_model(), space, spec["channels"], importance=None,
                              inplace=True)
    if "layers" in spec:
        got = layer_channels(model)
        for name, shape in spec["layers"].items():
            if got.get(name) != list(shape):
                raise ValueError(f"Spec layer {name!r} has channels {shape} but the rebuilt "
                                 f"network has {got.get(name)}; the spec is inconsistent.")
    return model, space


def save_pruned(path_prefix: str, space: SearchSpace, channels: Mapping[str, int],
                model: nn.Module) -> tuple[str, str]:
    """Write ``<prefix>.json`` (spec) and ``<prefix>.pt`` (state_dict) atomically."""
    from ._io import atomic_write_bytes, atomic_write_text
    import io

    spec_path, weights_path = f"{path_prefix}.json", f"{path_prefix}.pt"
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)  # loads anywhere
    atomic_write_bytes(weights_path, buf.getvalue())
    atomic_write_text(spec_path, json.dumps(make_spec(space, channels, model), indent=1))
    return spec_path, weights_path


def load_pruned(path_prefix: str) -> tuple[nn.Module, SearchSpace, dict[str, Any]]:
    """Rebuild a network written by :func:`save_pruned`."""
    with open(f"{path_prefix}.json") as f:
        spec = json.load(f)
    model, space = build_from_spec(spec)
    state = torch.load(f"{path_prefix}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model, space, spec
