"""The allocations a user who does not run prunetune would reach for, at prunetune's budget.

- ``sensitivity``: the sensitivity analysis as PaddleSlim and ModelOpt fastnas make it (each
  group cut alone, the threshold rule; ``search.sensitivity_allocation(rule="threshold")``);
- ``netadapt``: NetAdapt's greedy FLOPs-per-loss cuts on the same measurement, without its
  fine-tunes (``rule="greedy"``);
- ``tp_global``: Torch-Pruning's global magnitude pruning, progressive as its ``reproduce/``
  scripts run it: ``pruning_ratio=1.0`` over many ``iterative_steps``, ``pruner.step()``
  until prunetune's own cost model says the network fits, classifier ignored;
- ``tp_isomorphic``: the same with ``isomorphic=True`` (isomorphic pruning).

Each allocation is read back as per-group channels by each group's anchor layer, clamped to
the space's bounds (Torch-Pruning's ``max_pruning_ratio`` is no hard floor, Torch-Pruning
#448) and repaired onto the budget like every other arm, so the arms differ only in how the
channels are spread; which channels a group keeps is then chosen the same way for all (L1).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn as nn

from prunetune.evaluators import Sensitivity, channels_cost
from prunetune.spaces import Policy, SearchSpace

TP_STEPS = 400  # each step removes 1/400 of the prunable channels, globally ranked
TP_IMPORTANCE = {"p": 2, "group_reduction": "mean", "normalizer": "mean"}


def tp_allocation(base: nn.Module, space: SearchSpace, limits: Mapping[str, float],
                  size: int, isomorphic: bool = False, steps: int = TP_STEPS
                  ) -> tuple[Policy, dict[str, Any]]:
    """Torch-Pruning's global pruning stepped until the FLOPs fit; the raw policy (each group's
    kept channels over its full count, clamped to the space's bounds) and what was run."""
    import torch_pruning as tp

    model = copy.deepcopy(base).cpu().eval()
    imp = tp.importance.GroupMagnitudeImportance(**TP_IMPORTANCE)
    pruner = tp.pruner.MetaPruner(
        model, torch.randn(1, 3, size, size), importance=imp, global_pruning=True,
        isomorphic=isomorphic, pruning_ratio=1.0, iterative_steps=steps,
        ignored_layers=[model.get_submodule(space.head)])
    full = space.full_channels()

    def kept() -> dict[str, int]:
        return {g.name: model.get_submodule(g.anchor).out_channels for g in space.groups}

    done = 0
    while channels_cost(space, kept(), size).flops > limits["flops"] and done < steps:
        pruner.step()
        done += 1
    ch = kept()
    raw = space.validate({g: min(space.high, max(space.low, c / full[g])) for g, c in ch.items()})
    return raw, {"steps_run": done, "iterative_steps": steps, "importance":
                 f"GroupMagnitudeImportance({TP_IMPORTANCE})", "isomorphic": isomorphic,
                 "channels_before_clamp": ch,
                 "flops_fraction_before_repair": channels_cost(space, ch, size).flops
                 / limits["flops"]}


def peer_allocations(base: nn.Module, space: SearchSpace, sens: Sensitivity,
                     limits: Mapping[str, float], size: int = 32
                     ) -> dict[str, tuple[Policy, dict[str, Any]]]:
    """Every peer's raw allocation at ``limits`` (repair each onto the budget to use it)."""
    from prunetune.search import sensitivity_allocation

    out: dict[str, tuple[Policy, dict[str, Any]]] = {
        "sensitivity": (sensitivity_allocation(space, sens, limits, size, rule="threshold"),
                        {"rule": "threshold", "measure": "accuracy"}),
        "netadapt": (sensitivity_allocation(space, sens, limits, size, rule="greedy"),
                     {"rule": "greedy", "measure": "accuracy"}),
    }
    for name, iso in (("tp_global", False), ("tp_isomorphic", True)):
        out[name] = tp_allocation(base, space, limits, size, isomorphic=iso)
    return out
