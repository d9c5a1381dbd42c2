"""Networks the project has never seen: a factory in a Python file, or a timm model by name.

``--model path/to/net.py:make`` and ``--model timm:resnet18`` get the same automatic space as
any torchvision name (:func:`auto_space`): groups from Torch-Pruning's dependency graph, and a
once-per-architecture check that the network pruned to half width costs what the analytic
model says, else it is refused with the reason.

A file's *source* is part of its space's :meth:`~SearchSpace.config`, so Ray workers, cluster
nodes and :func:`evaluators.load_pruned` rebuild the network from the config alone, without
the file; its SHA-256 identifies the architecture (base-model cache, latency tables, resume).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import os
import sys
import types
from typing import Any, Callable

import torch.nn as nn

from ._torchvision import _AutoSpace, one_line
from ._trace import UnsupportedNetwork, _run_order, slim

TIMM_PREFIX = "timm:"


class ModelFileError(ValueError):
    """A ``FILE.py:CALLABLE`` that does not give a network; the message names it and the fix."""


def is_custom(name: str) -> bool:
    """Whether ``name`` is a ``timm:NAME`` or ``FILE.py:CALLABLE`` model (not a registry key)."""
    return name.startswith(TIMM_PREFIX) or ":" in name


def custom_space(name: str, **kwargs: Any) -> _AutoSpace:
    """The space of a ``timm:NAME`` or ``FILE.py:CALLABLE`` model (see the module docstring).

    Raises:
        ModelFileError: the file, its callable or what it returns is unusable; timm is not
            installed or has no such model.
        UnsupportedNetwork: the network cannot be traced, or its cost not modelled.
    """
    if name.startswith(TIMM_PREFIX):
        return timm_space(name[len(TIMM_PREFIX):])(**kwargs)
    return FileSpace(name, **kwargs)


# -- a factory in a Python file -----------------------------------------------------------------
class FileSpace(_AutoSpace):
    """A space over ``factory()`` of a Python file given as ``FILE.py:CALLABLE``.

    The factory is called with ``num_classes=`` when it takes that argument (or ``**kwargs``);
    a network whose head (the last conv/linear layer to run) has another class count gets a new
    head of the same kind. The file runs as a module of its own, from its source: it may import
    installed packages, not files beside it (workers rebuild it from the source alone).

    Args:
        spec: ``FILE.py:CALLABLE``; the file is read unless ``source`` is given.
        source, sha256: The file's text and its SHA-256 (as :meth:`config` gives them); a
            ``sha256`` that does not match ``source`` is refused.
        width_mult, num_classes, low, high, step, round_to: See :class:`TorchvisionSpace`.
    """

    def __init__(self, spec: str, *, source: str | None = None, sha256: str | None = None,
                 **kwargs: Any) -> None:
        path, sep, fn_name = spec.rpartition(":")
        if not sep or not path or not fn_name.isidentifier():
            raise ModelFileError(f"--model {spec!r} is not FILE.py:CALLABLE; give e.g. "
                                 f"--model path/to/net.py:make_model.")
        if source is None:
            source = read_model_file(path, spec)
        digest = source_sha256(source)
        if sha256 is not None and sha256 != digest:
            raise ModelFileError(f"model {spec!r}: its source does not match its sha256 "
                                 f"({sha256[:12]}… recorded, {digest[:12]}… now); the spec was "
                                 f"edited, re-save the model.")
        self.name = f"{os.path.basename(path)}:{fn_name}"
        self.source, self.sha256, self.callable_name = source, digest, fn_name
        self.factory = _factory(source, os.path.basename(path), fn_name, spec)
        super().__init__(**kwargs)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "source": self.source, "sha256": self.sha256}

    def build_model(self) -> nn.Module:
        model = _call_factory(self.factory, self.num_classes, self.name)
        try:
            model = replace_head(model, self.num_classes, self.trace_size)
        except Exception as e:  # noqa: BLE001 - whatever the user's forward raises
            raise UnsupportedNetwork(
                f"--model {self.name}: it cannot be traced: running it on a 1x3x"
                f"{self.trace_size}x{self.trace_size} image raised {one_line(e)}; the network "
                f"must take 3-channel images of any size (e.g. adaptive pooling before its "
                f"classifier).") from None
        return slim(model, self.width_mult) if self.width_mult != 1.0 else model


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def read_model_file(path: str, spec: str) -> str:
    """The text of a model file, or a :class:`ModelFileError` naming what is wrong."""
    if not path.endswith(".py"):
        raise ModelFileError(f"--model {spec!r}: {path!r} is not a .py file; give "
                             f"FILE.py:CALLABLE.")
    if not os.path.isfile(path):
        raise ModelFileError(f"--model {spec!r}: file {path!r} does not exist; check the path "
                             f"(relative to {os.getcwd()}).")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"--model {spec!r}: cannot read {path!r} ({one_line(e)}).") \
            from None


@functools.lru_cache(maxsize=16)
def _module(source: str, filename: str) -> types.ModuleType:
    """The file run as a module of its own (once per source and process). It is entered in
    ``sys.modules`` under a name of its hash, so that its classes pickle within the process."""
    name = f"prunetune_model_{source_sha256(source)[:16]}"
    mod = types.ModuleType(name)
    mod.__file__ = filename
    sys.modules[name] = mod
    try:
        exec(compile(source, filename, "exec"), mod.__dict__)  # noqa: S102 - the user's model
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def _factory(source: str, filename: str, fn_name: str, spec: str) -> Callable[..., Any]:
    try:
        mod = _module(source, filename)
    except Exception as e:  # noqa: BLE001 - whatever the user's file raises
        hint = (" (it is run from its source, so it may import installed packages only, not "
                "files beside it)") if isinstance(e, ImportError) else ""
        raise ModelFileError(f"--model {spec!r}: running {filename} raised {one_line(e)}"
                             f"{hint}; fix the file.") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == mod.__name__)
        what = "is not callable" if fn is not None else "is not defined there"
        raise ModelFileError(f"--model {spec!r}: {fn_name!r} {what}; callables defined in "
                             f"{filename}: {found}.")
    return fn


def _call_factory(fn: Callable[..., Any], num_classes: int, name: str) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        params = []
    takes = any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)
    call = f"{fn.__name__}(num_classes={num_classes})" if takes else f"{fn.__name__}()"
    try:
        model = fn(num_classes=num_classes) if takes else fn()
    except Exception as e:  # noqa: BLE001 - whatever the user's factory raises
        raise ModelFileError(f"--model {name}: {call} raised {one_line(e)}; fix the factory "
                             f"or give another callable.") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"--model {name}: {call} returned a {type(model).__name__}, not a "
                             f"torch.nn.Module; return the network itself.")
    if not any(True for _ in model.parameters()):
        raise ModelFileError(f"--model {name}: {call} returned a network without parameters; "
                             f"return the network to prune.")
    return model


def replace_head(model: nn.Module, num_classes: int, input_size: int) -> nn.Module:
    """``model`` with a new (untrained) classifier for ``num_classes`` if its head, the last
    conv or linear layer to run, has another number of outputs; in place."""
    order, _, _ = _run_order(model, input_size)
    if not order:
        return model
    head_name = order[-1]
    head = model.get_submodule(head_name)
    if isinstance(head, nn.Linear):
        if head.out_features == num_classes:
            return model
        new: nn.Module = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    else:
        if head.out_channels == num_classes:
            return model
        new = nn.Conv2d(head.in_channels, num_classes, head.kernel_size, head.stride,
                        head.padding, head.dilation, 1, head.bias is not None)
    parent, _, attr = head_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


# -- timm ---------------------------------------------------------------------------------------
def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ModelFileError("--model timm:NAME needs timm, which is not installed: "
                             "pip install -e \".[timm]\" (or pip install timm).") from None
    return timm


@functools.cache
def timm_space(model_name: str) -> type[_AutoSpace]:
    """A space over timm's ``model_name`` (built with ``pretrained=False``: nothing is
    downloaded; the base comes from ``--checkpoint`` or is trained here).

    Raises:
        ModelFileError: timm is not installed or has no model of that name.
    """
    timm = _timm()
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
        raise ModelFileError(f"--model timm:{model_name}: timm has no model {model_name!r}"
                             f"{f'; did you mean {close}?' if close else ''} (list them with "
                             f"timm.list_models('*pattern*')).")
    doc = (f"timm's {model_name}, grouped automatically from Torch-Pruning's dependency graph "
           f"(groups named by their first layer).")
    builder = functools.partial(timm.create_model, model_name, pretrained=False)
    return type(f"Timm_{model_name}", (_AutoSpace,), {
        "name": TIMM_PREFIX + model_name, "builder": staticmethod(builder), "__doc__": doc,
        "__module__": __name__})
