"""The Python face of the pipeline: ``prunetune.search(model, budget, train=..., val=...)``.

    import prunetune

    result = prunetune.search(model, "50%-FLOPs", train=train_set, val=val_set, trials=20)
    small = result.pruned_model()          # an nn.Module within the budget
    result.export("small.onnx")

The keyword options are the command line's long options with ``_`` (``trials``,
``final_epochs``, ``input_size``, …), typed and checked exactly as ``--config`` keys are
(:func:`prunetune.cli.config_value`, :func:`prunetune.cli.validate`), so there is one copy of
the rules; the job is :func:`prunetune.cli.make_job`'s and runs through the one pipeline,
:func:`prunetune.pipeline.run_search`. What differs from the command line: the model's own
weights are the base (nothing is trained first), the data is the caller's, ``input_size``
defaults to the data's image size, and latency is predicted (a lookup table is built) only
when a budget is in milliseconds or ``latency="predict"`` is asked for.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

# Options of the command line that are arguments of search() or mean nothing for a module.
_NOT_OPTIONS = {"help", "budget", "model", "width", "data", "weights", "checkpoint",
                "base_epochs", "config", "resume", "dry_run"}
_PATH_ONLY = ("image_size", "per_class", "val_fraction")  # they shape a folder's images
_API_ONLY = {"flip": "flip training images horizontally (in-memory datasets; default True)",
             "log": "a callable taking each progress line (default print; None for quiet)"}


def option_names() -> list[str]:
    """The keyword options :func:`search` takes."""
    from prunetune.cli import build_parser

    return sorted({a.dest for a in build_parser()._actions} - _NOT_OPTIONS | set(_API_ONLY))


@dataclass
class SearchResult:
    """What :func:`search` returns: the run's front, its pick and the way to its network.

    Attributes:
        out: The run folder (``pareto.json``, ``summary.json``, ``final/``, the study).
        summary: :func:`prunetune.pipeline.run_search`'s summary (``summary.json`` plus the
            records of every trial, ``records``).
    """

    out: str
    summary: dict[str, Any] = field(repr=False)
    space: Any = field(repr=False)
    base: nn.Module = field(repr=False)
    data: Any = field(repr=False)
    input_size: int = 224
    importance: str = "l1"
    bn_batches: int = field(default=20, repr=False)
    batch_size: int = field(default=64, repr=False)
    seed: int = field(default=0, repr=False)

    @property
    def front(self) -> list[dict[str, Any]]:
        """The Pareto front: one record per candidate (``trial``, ``accuracy`` on the
        validation set, ``flops``, ``macs``, ``params``, ``latency_ms``, ``policy``,
        ``channels``, ``within_budget``, …)."""
        return list(self.summary["front"])

    @property
    def pick(self) -> dict[str, Any] | None:
        """The chosen record (the best within the budget after refinement), which the final
        fine-tune trained; ``None`` when no candidate met the budget."""
        return self.summary["pick_record"]

    def _picked(self) -> dict[str, Any]:
        """:attr:`pick`, or a ValueError when no candidate met the budget."""
        pick = self.pick
        if pick is None:
            raise ValueError(f"no candidate of the run in {self.out!r} met the budget, so there "
                             f"is no pruned model; raise the budget or run more trials.")
        return pick

    def pruned_model(self) -> nn.Module:
        """The picked network, a new ``nn.Module`` on the CPU within the budget: the
        fine-tuned one from ``out/final/`` when the final fine-tune ran, else the base pruned
        to the pick's channels with its BatchNorm statistics re-estimated (not fine-tuned).

        Raises:
            ValueError: no candidate met the budget.
        """
        from prunetune.evaluators import (adaptive_bn, importance_gradients, load_pruned,
                                          prune_to_channels)

        pick = self._picked()
        tag = "uniform" if pick["baseline"] == "uniform" else f"trial{pick['trial']}"
        prefix = os.path.join(self.out, "final", tag, "model")
        if os.path.isfile(prefix + ".json") and os.path.isfile(prefix + ".pt"):
            return load_pruned(prefix)[0].eval()
        grads = importance_gradients(self.importance, self.base, self.data, self.seed)
        model = prune_to_channels(self.base, self.space, pick["channels"], self.importance,
                                  input_size=self.data.image_size, grads=grads)
        adaptive_bn(model, self.data, self.bn_batches, self.batch_size,
                    torch.Generator().manual_seed(self.seed))
        return model.eval()

    def export(self, path: str) -> str:
        """Write :meth:`pruned_model` to ``path``: ``.onnx`` (checked in onnxruntime when it
        is installed; input ``1x3xSxS`` at the run's ``input_size``, dynamic batch), or
        ``.pt``, a state_dict beside a ``.json`` spec that
        ``prunetune.evaluators.load_pruned(path[:-3])`` rebuilds the network from.

        Returns:
            The path written.

        Raises:
            ValueError: another suffix, or ``.onnx`` without the onnx package.
        """
        from prunetune.evaluators import save_pruned
        from prunetune.search import export

        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        if path.endswith(".onnx"):
            if importlib.util.find_spec("onnx") is None:
                raise ValueError(f"export({path!r}) needs onnx, which is not installed: pip "
                                 f"install onnx onnxruntime (or export to a .pt file).")
            return export(self.pruned_model(), path[:-len(".onnx")], self.input_size,
                          log=lambda s: None)
        if path.endswith(".pt"):
            model = self.pruned_model()
            return save_pruned(path[:-len(".pt")], self.space, self._picked()["channels"],
                               model)[1]
        raise ValueError(f"export({path!r}): the file must end in .onnx (ONNX) or .pt "
                         f"(state_dict plus a .json spec for evaluators.load_pruned).")


def search(model: nn.Module, budget: str | Sequence[str], *, train: Any, val: Any = None,
           test: Any = None, **options: Any) -> SearchResult:
    """Search per-layer channel keep-ratios of ``model`` under ``budget``; its current
    weights are the dense base.

    Args:
        model: The network (conv/linear layers, BatchNorm after convs; see the custom-model rules
            in docs/networks.md). Its outputs are the classes; it is deep-copied, not changed.
        budget: ``"50%-FLOPs"``, ``"300M-FLOPs"``, ``"150M-MACs"``, ``"2.5M-params"``,
            ``"12ms-latency"``, or a list of them (all must hold); ``%`` is of ``model``.
        train, val, test: torch ``Dataset``s (or lists) of ``(image, label)``: float
            3×H×W tensors of one square size, as the network takes them, and class indices.
            They are read once into memory. The search scores candidates on ``val``; the
            final models are tested on ``test`` (``val`` when ``None``). Or ``train`` is an
            ImageFolder (``train/`` and ``val/`` or ``test/`` inside) or CIFAR-10 python
            folder, with ``val`` and ``test`` ``None``: the validation split is carved from
            its training images (options ``val_fraction``, ``image_size``, ``per_class``).
        **options: the command line's long options with ``_`` (:func:`option_names`), e.g.
            ``trials``, ``workers``, ``seed``, ``out`` (default ``runs/<time>``; a folder
            holding a study of the same search resumes it), ``input_size`` (default: the
            images' size), ``low``/``high``/``step``/``round_to``, ``final_epochs``; and
            ``flip`` and ``log``.

    Returns:
        A :class:`SearchResult`.

    Raises:
        TypeError: an unknown option, or ``model`` is not an ``nn.Module``.
        ValueError: a bad budget, option value or dataset, a network that cannot be traced,
            a budget no candidate (or the model itself) meets; each in one line naming it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prunetune.search: model is a {type(model).__name__}, not a "
                        f"torch.nn.Module; give the network whose weights are the base.")
    try:
        return _search(model, budget, train, val, test, options)
    except ValueError as e:
        if type(e) not in _reworded():
            raise
        # The pipeline's messages name the command line's options; here they are keywords.
        raise type(e)(_api_words(str(e))) from None


def _search(model: nn.Module, budget: str | Sequence[str], train: Any, val: Any, test: Any,
            options: dict[str, Any]) -> SearchResult:
    from prunetune import cli
    from prunetune.evaluators import weights_fingerprint
    from prunetune.pipeline import job_space, run_search
    from prunetune.search import parse_budgets
    from prunetune.spaces import architecture_sha256

    budgets = parse_budgets(budget)
    options = dict(options)
    log: Callable[[str], None] = options.pop("log", print) or (lambda s: None)
    flip = options.pop("flip", True)
    if not isinstance(flip, bool):
        raise ValueError(f"option 'flip' = {flip!r} is not true or false.")
    folder = os.fspath(train) if isinstance(train, (str, os.PathLike)) else None
    path_options = sorted(set(options) & set(_PATH_ONLY))
    if folder is None and path_options:
        raise ValueError(f"option(s) {path_options} shape the images of a folder; with "
                         f"datasets, prepare the images in them instead.")
    a = _settings(options, budgets, folder)
    data = _data(model, train, val, test, a, flip)
    if "input_size" not in options:
        a.input_size = data.image_size
    a.model = f"module:{type(model).__name__}"
    a.data = train if isinstance(train, (str, os.PathLike)) else "in-memory datasets"
    # What defines the study besides the options: a resumed run must have the same of each.
    a.model_sha256 = architecture_sha256(model)
    a.base_sha256 = weights_fingerprint(model)
    digest = hashlib.sha256()
    for split in (data.train, data.val):
        digest.update(split.fingerprint())
    a.data_sha256, a.flip = digest.hexdigest()[:16], flip
    out = cli.resolve_out(a)
    cfg = json.loads(json.dumps(cli.study_config(a), default=str))
    try:
        cli.check_resume(out, cfg)
        if a.storage:
            cli.check_storage(a.storage)
    except cli.UsageError as e:
        raise ValueError(_api_words(str(e))) from None
    job = replace(cli.make_job(a, budgets, out, cfg), model=model, data=data)
    summary = run_search(job, log=log)
    return SearchResult(out=out, summary=summary, space=job_space(job, data),
                        base=copy.deepcopy(model).cpu(), data=data, input_size=a.input_size,
                        importance=a.importance, bn_batches=a.bn_batches,
                        batch_size=a.batch_size, seed=a.seed)


def _reworded() -> tuple[type[Exception], ...]:
    """The project's one-line errors (each built from its message alone)."""
    from prunetune.evaluators import CheckpointError, DataError, DeviceError
    from prunetune.pipeline import SetupError
    from prunetune.search import BudgetError
    from prunetune.spaces import ModelFileError, UnsupportedNetwork

    return (BudgetError, CheckpointError, DataError, DeviceError, ModelFileError, SetupError,
            UnsupportedNetwork)


def _api_words(message: str) -> str:
    """A command-line message in the API's words: ``--final-epochs`` is ``final_epochs``."""
    return re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _settings(options: dict[str, Any], budgets: list[Any],
              folder: str | None) -> argparse.Namespace:
    """The options as the command line's checked namespace (``folder``: the data's, as
    ``--data``, or ``None`` for the caller's datasets).

    Raises:
        TypeError: an option the command line does not have.
        ValueError: a value of the wrong type or out of range.
    """
    from prunetune import cli

    parser = cli.build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest not in _NOT_OPTIONS}
    bad = sorted(set(options) - set(actions))
    if bad:
        raise TypeError(f"prunetune.search got unknown option(s) {bad}; valid options are "
                        f"{option_names()}.")
    try:
        given = {k: cli.config_value(actions[k], list(v) if isinstance(v, tuple) else
                                     os.fspath(v) if isinstance(v, os.PathLike) else v,
                                     what="option")
                 for k, v in options.items()}
        latency = given.get("latency") or ("predict" if any(b.metric == "latency"
                                                            for b in budgets) else "off")
        parser.set_defaults(**{"objectives": "accuracy,flops" if latency == "off"
                               else "accuracy,flops,latency", **given, "latency": latency,
                               "data": folder})
        a = parser.parse_args([arg for b in budgets for arg in ("--budget", str(b))])
        cli.check_values(parser, a)
        cli.check_given(a, set(given))
        for k, v in cli.DATA_DEFAULTS.items():
            if getattr(a, k) is None:
                setattr(a, k, v)
        if a.dashboard_port is None:
            a.dashboard_port = cli.DASHBOARD_PORT
        cli.validate(a)
        cli.check_latency_budget(budgets, a.latency)
        cli.check_budgets(budgets)
    except cli.UsageError as e:
        raise ValueError(_api_words(str(e))) from None
    return a


def _data(model: nn.Module, train: Any, val: Any, test: Any, a: argparse.Namespace,
          flip: bool) -> Any:
    """The caller's data as the pipeline's :class:`evaluators.ImageData`."""
    from prunetune.evaluators import dataset_image_size, from_datasets, load_data
    from prunetune.spaces import ModuleSpace

    if isinstance(train, (str, os.PathLike)):
        if val is not None or test is not None:
            raise ValueError(f"train={os.fspath(train)!r} is a folder, whose own splits are "
                             f"used; give val=None and test=None with it (or datasets for "
                             f"all three).")
        return load_data(os.fspath(train), image_size=a.image_size, val_fraction=a.val_fraction,
                         seed=a.seed, per_class=a.per_class)
    if val is None:
        raise ValueError("val is required with a training Dataset: the search scores "
                         "candidates on it (e.g. torch.utils.data.random_split(train, ...)).")
    # The network is traced at the images' size, and its outputs are the classes.
    classes = ModuleSpace(model, trace_size=dataset_image_size(train)).num_classes
    return from_datasets(train, val, test, num_classes=classes, flip=flip)

