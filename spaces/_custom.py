"""Networks the project has never seen: a factory in a Python file, a timm model by name, or a
module instance (the Python API's ``prunetune.search(model, ...)``, :class:`ModuleSpace`).

``--model path/to/net.py:make`` and ``--model timm:resnet18`` get the same automatic space as
any torchvision name (:func:`auto_space`): groups from Torch-Pruning's dependency graph, and a
once-per-architecture check that the network pruned to half width costs what the analytic
model says, else it is refused with the reason.

A file's *source* is part of its space's :meth:`~SearchSpace.config`, so Ray workers, cluster
nodes and :func:`evaluators.load_pruned` rebuild the network from the config alone, without
the file; its SHA-256 identifies the architecture (base-model cache, latency tables, resume).
"""

from __future__ import annotations

import base64
import copy
import difflib
import functools
import hashlib
import inspect
import os
import pickle
import site
import sys
import sysconfig
import types
from typing import Any, Callable, Iterable, cast

import torch
import torch.nn as nn

from ._torchvision import _AutoSpace, one_line
from ._trace import UnsupportedNetwork, _run_order, out_width, slim

TIMM_PREFIX = "timm:"
MODULE_PREFIX = "module:"


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
    if name.startswith(MODULE_PREFIX):
        return ModuleSpace(**kwargs)
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
        params: Iterable[inspect.Parameter] = inspect.signature(fn).parameters.values()
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
        conv = cast(nn.Conv2d, head)  # the run order holds only conv and linear layers
        if conv.out_channels == num_classes:
            return model
        # torch types a Conv2d's sizes as tuple[int, ...] but takes tuple[int, int]
        new = nn.Conv2d(conv.in_channels, num_classes,
                        conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                        conv.padding, conv.dilation,  # type: ignore[arg-type]
                        1, conv.bias is not None)
    parent, _, attr = head_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


# -- a module instance -------------------------------------------------------------------------
class ModuleSpace(_AutoSpace):
    """A space over the architecture of a module instance (``prunetune.search(model, ...)``).

    The module is deep-copied without its parameters (they go to the ``meta`` device; buffers
    stay) and pickled with cloudpickle into :meth:`config`, so Ray workers, cluster nodes and
    :func:`evaluators.load_pruned` rebuild the network from the config alone; classes of the
    caller's own code (outside installed packages) travel by value, as a file's source does for
    :class:`FileSpace`. Loading a spec of this space unpickles it: load only specs you trust.

    :meth:`build_model` gives the architecture freshly initialised; the dense base's weights
    are the module's own, which the caller hands on (the pipeline never trains a base for it).
    ``sha256`` identifies the architecture (the module tree with each layer's options, tensor
    shapes, and the source of the caller's own classes), not the weights.

    Args:
        module: The network, or its pickled skeleton as :meth:`config` gives it.
        sha256: With a pickled skeleton: its architecture's digest, as :meth:`config` gives it.
        trace_size: Input size at which the network is run to find its structure (give the
            data's image size for a network that runs at no other, e.g. a flatten before a
            linear head).
        num_classes: When given, must be the module's outputs (its head is not replaced: its
            weights are the base's).
        width_mult: Must be 1.0: the module's width is the base's.
        low, high, step, round_to: See :class:`SearchSpace`.

    Raises:
        ModelFileError: ``module`` is not a module with parameters, or ``num_classes`` is not
            its outputs.
        UnsupportedNetwork: it cannot be traced at ``trace_size``, or its cost not modelled.
    """

    def __init__(self, module: nn.Module | str, *, sha256: str | None = None,
                 trace_size: int = 64, num_classes: int | None = None,
                 width_mult: float = 1.0, **kwargs: Any) -> None:
        if width_mult != 1.0:
            raise ValueError(f"`width_mult` of a module's space must be 1.0 (its width is the "
                             f"base's), but got {width_mult=}.")
        if isinstance(module, str):
            if sha256 is None:
                raise ValueError("a pickled module needs its `sha256`, as config() gives it.")
            self.skeleton, self.blob, self.sha256 = _loads(module), module, sha256
        elif isinstance(module, nn.Module):
            if not any(True for _ in module.parameters()):
                raise ModelFileError(f"model {type(module).__name__} has no parameters; give "
                                     f"the network to prune.")
            self.skeleton = _skeleton(module)
            self.blob, self.sha256 = _dumps(self.skeleton), architecture_sha256(module)
        else:
            raise ModelFileError(f"model is a {type(module).__name__}, not a torch.nn.Module; "
                                 f"give the network itself.")
        self.name = MODULE_PREFIX + type(self.skeleton).__name__
        self.trace_size = self.prune_size = trace_size
        try:
            order, _, _ = _run_order(self.build_model(), trace_size)
        except Exception as e:  # noqa: BLE001 - whatever the user's forward raises
            raise UnsupportedNetwork(
                f"model {self.name}: it cannot be traced: running it on a 1x3x{trace_size}x"
                f"{trace_size} image raised {one_line(e)}; it must take 3-channel images of "
                f"the data's size.") from None
        if not order:
            raise UnsupportedNetwork(f"model {self.name} runs no conv or linear layer; there "
                                     f"is nothing to prune.")
        outputs = out_width(self.skeleton.get_submodule(order[-1]))
        if num_classes is not None and num_classes != outputs:
            raise ModelFileError(f"model {self.name} has {outputs} outputs (its last layer "
                                 f"{order[-1]!r}) but {num_classes} classes were asked for; "
                                 f"give a model whose head fits the data's classes.")
        super().__init__(num_classes=outputs, **kwargs)

    @property
    def arch_key(self) -> tuple:
        return type(self), self.name, self.sha256, self.trace_size

    def config(self) -> dict[str, Any]:
        return {**super().config(), "module": self.blob, "sha256": self.sha256,
                "trace_size": self.trace_size}

    def build_model(self) -> nn.Module:
        model = copy.deepcopy(self.skeleton)
        for mod in model.modules():
            made = False
            for k, p in mod._parameters.items():
                if p is not None and p.is_meta:
                    mod._parameters[k] = nn.Parameter(torch.zeros(p.shape, dtype=p.dtype),
                                                      requires_grad=p.requires_grad)
                    made = True
            reset = getattr(mod, "reset_parameters", None)
            if made and callable(reset):
                reset()
        return model


def _skeleton(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters are on the ``meta`` device (no weights are
    copied) and whose buffers are on the CPU."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in module.parameters()}
    skel = copy.deepcopy(module, memo)
    for mod in skel.modules():
        for k, b in mod._buffers.items():
            if b is not None:
                mod._buffers[k] = b.detach().cpu()
    return skel.train()


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    roots += getattr(site, "getsitepackages", list)() + [site.getusersitepackages()]
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def _own_modules(model: nn.Module) -> list[types.ModuleType]:
    """The modules of ``model``'s classes that are the caller's own code, not installed
    packages (``__main__`` is pickled by value anyway)."""
    roots, out = _installed_roots(), []
    for name in sorted({type(m).__module__ for m in model.modules()}):
        mod = sys.modules.get(name)
        path = getattr(mod, "__file__", None)
        if (mod is not None and name != "__main__" and path
                and not os.path.realpath(path).startswith(roots)):
            out.append(mod)
    return out


def _dumps(skeleton: nn.Module) -> str:
    from ray import cloudpickle  # Ray's own: what its workers unpickle with

    own = _own_modules(skeleton)
    for mod in own:
        cloudpickle.register_pickle_by_value(mod)
    try:
        data = cloudpickle.dumps(skeleton)
    finally:
        for mod in own:
            cloudpickle.unregister_pickle_by_value(mod)
    return base64.b64encode(data).decode("ascii")


def _loads(blob: str) -> nn.Module:
    return pickle.loads(base64.b64decode(blob))  # noqa: S301 - a spec of the caller's own


def architecture_sha256(model: nn.Module) -> str:
    """A digest of ``model``'s architecture: its module tree with each layer's options, its
    tensors' names, shapes and types, and the source of the classes of the caller's own code
    (where Python can find it); not its weights."""
    h = hashlib.sha256(repr(model).encode())
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
    own = {m.__name__ for m in _own_modules(model)} | {"__main__"}
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: c.__qualname__):
        h.update(f"{cls.__module__}.{cls.__qualname__};".encode())
        if cls.__module__ in own:
            try:
                h.update(inspect.getsource(cls).encode())
            except (OSError, TypeError):
                pass
    return h.hexdigest()


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
