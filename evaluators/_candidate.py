"""The evaluation the search injects into its trials: a candidate's channels in, its worth out.

The search core (``search.run_study``, ``search.run_refine``) only knows the contract:

    evaluate(config) -> {"accuracy", "score", "flops", "macs", "params", "latency_ms",
                         "attrs": {...}}            or  {"failure": "why", "attrs": {...}}

where ``config`` holds at least ``channels`` (per group) and may hold ``score`` (overrides of
the :class:`ScoreConfig` fields, e.g. more steps for a refinement rung); every other key is
passed through into ``attrs``. :class:`CandidateEvaluator` is the real implementation
(prune → adaptive BN → quick fine-tune → validation metrics, costs, latency); tests hand the
search a cheap fake with the same contract.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from prunetune.spaces import SearchSpace, get_space

from ._cost import channels_cost, measure_latency
from ._data import ImageData
from ._device import configure_backends
from ._latency_table import LatencyTable
from ._score import ScoreConfig, score_candidate

Evaluate = Callable[[Mapping[str, Any]], dict]


def worker_base(space: str, space_config: Mapping[str, Any],
                base_state: Mapping[str, torch.Tensor], device: str, threads: int
                ) -> tuple[SearchSpace, nn.Module]:
    """What a Ray worker scoring or fine-tuning against the dense base starts with: ``threads``
    torch threads, the space rebuilt by name, and the base with ``base_state`` on ``device``
    (its backends configured, :func:`configure_backends`)."""
    torch.set_num_threads(threads)
    rebuilt = get_space(space, **space_config)
    base = rebuilt.build_model()
    base.load_state_dict(base_state)
    configure_backends(device)
    return rebuilt, base.to(device)


@dataclass
class CandidateEvaluator:
    """Scores candidates of one space against one dense base on one dataset.

    Picklable: Ray ships it (with the base weights and the data) to each worker once.

    Attributes:
        space, space_config: The search space, rebuilt with :func:`spaces.get_space`.
        base_state: The dense base's ``state_dict``.
        data: Training/validation images (scoring never touches the test split).
        score: How candidates are scored (a config's ``score`` key overrides fields).
        deploy_size: Input size for FLOPs and latency.
        threads: Torch threads per evaluation.
        latency: ``predict`` (lookup table), ``measure`` (timed here) or ``off``.
        latency_table: The table's JSON, for ``predict``.
        device: Where candidates are pruned and trained: ``cpu`` or ``cuda`` (in a Ray trial
            with GPU resources, ``cuda`` is the GPU Ray assigned to it).
        latency_device: Where ``latency="measure"`` times candidates (default: ``device``).
        latency_runtime: ``torch`` (eager) or ``onnxruntime`` for ``latency="measure"``.
    """

    space: str
    space_config: dict
    base_state: dict
    data: ImageData
    score: ScoreConfig = ScoreConfig()
    deploy_size: int = 224
    threads: int = 1
    latency: str = "predict"
    latency_table: str | None = None
    latency_threads: int = 1
    latency_repeats: int = 10
    device: str = "cpu"
    latency_device: str | None = None
    latency_runtime: str = "torch"
    _table: LatencyTable | None = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None}

    def __call__(self, config: Mapping[str, Any]) -> dict:
        t0 = time.perf_counter()
        space, base = worker_base(self.space, self.space_config, self.base_state, self.device,
                                  self.threads)
        channels = dict(config["channels"])
        cost = channels_cost(space, channels, self.deploy_size)
        cfg = replace(self.score, **config.get("score", {}))
        res, model = score_candidate(base, space, self.data, channels, cfg)
        attrs: dict[str, Any] = {k: v for k, v in config.items() if k != "score"}
        attrs.update(cost.as_dict(), history=res.history, metrics=res.metrics,
                     score_seconds=res.seconds)
        if res.failure or model is None:
            return {"failure": res.failure or "no model", "attrs": attrs}
        latency = float("nan")
        if self.latency == "measure":
            m = model.to(memory_format=torch.contiguous_format)
            lat_dev = self.latency_device or self.device
            if self.device != "cpu" and lat_dev.startswith("cuda"):
                lat_dev = "cuda"  # the GPU Ray gave this trial (the only one it sees)
            lat = measure_latency(m, self.deploy_size, device=lat_dev,
                                  threads=self.latency_threads, warmup=2,
                                  repeats=self.latency_repeats, runtime=self.latency_runtime)
            latency, attrs["latency"] = lat.median_ms, {**lat.as_dict(), "source": "measured"}
        elif self.latency == "predict" and self.latency_table:
            if self._table is None:
                self._table = LatencyTable.from_json(self.latency_table)
            latency = self._table.predict_channels(space.layers(channels, self.deploy_size))
            attrs["latency"] = {"median_ms": latency, "source": "predicted",
                                "threads": self.latency_threads,
                                "input_size": self.deploy_size}
        attrs["wall_seconds"] = time.perf_counter() - t0
        attrs["worker_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        attrs["node"] = os.uname().nodename
        attrs["pid"] = os.getpid()
        attrs["device"] = (f"{self.device} ({torch.cuda.get_device_name()}, "
                           f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})"
                           if self.device != "cpu" else "cpu")
        return {"accuracy": res.accuracy, "score": res.score, "flops": cost.flops,
                "macs": cost.macs, "params": cost.params, "latency_ms": latency,
                "attrs": attrs}
