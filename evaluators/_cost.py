"""What a candidate costs: FLOPs/MACs/params from shapes or from a built model, and latency.

FLOPs follow ``torch.utils.flop_counter.FlopCounterMode``: 2 × MACs of conv and linear layers;
BN, activations, adds and pooling count zero. Parameters count every parameter (BN included).
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from prunetune._registry import Registry
from prunetune.spaces import LayerShape, SearchSpace, counted_cost

from ._device import cuda_timer


@dataclass(frozen=True)
class Cost:
    """Compute and size of a network at one input size."""

    macs: int
    params: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def as_dict(self) -> dict[str, int]:
        return {"flops": self.flops, **asdict(self)}

    def __str__(self) -> str:
        return (f"{self.flops / 1e6:,.2f}M FLOPs ({self.macs / 1e6:,.2f}M MACs), "
                f"{self.params / 1e6:,.3f}M params")


def shapes_cost(layers: Sequence[LayerShape]) -> Cost:
    """Cost of a network given as layer shapes (a pure function of shapes)."""
    return Cost(macs=sum(layer.macs for layer in layers),
                params=sum(layer.params for layer in layers))


def policy_cost(space: SearchSpace, policy: Mapping[str, float], input_size: int = 224) -> Cost:
    """Analytic cost of ``policy`` without building a model (the search's inner loop)."""
    return shapes_cost(space.layers(space.channels(policy), input_size))


def channels_cost(space: SearchSpace, channels: Mapping[str, int], input_size: int = 224) -> Cost:
    """Analytic cost of explicit group channel counts."""
    return shapes_cost(space.layers(channels, input_size))


def model_cost(model: nn.Module, input_size: int = 224) -> Cost:
    """Cost of a built model, counted by ``FlopCounterMode`` on one input."""
    macs, params = counted_cost(model, input_size)
    return Cost(macs=macs, params=params)


@dataclass(frozen=True)
class Latency:
    """Per-image latency of repeated forward passes, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    device: str
    threads: int
    input_size: int
    runtime: str = "torch"

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: the relative spread of the measurements."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.median_ms:.2f} ms (p10 {self.p10_ms:.2f}, p90 {self.p90_ms:.2f}; "
                f"{self.repeats} runs, {self.device}, {self.runtime}, {self.threads} thread(s), "
                f"{self.input_size}x{self.input_size})")


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)``, restoring the old value after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_STEADY = False


def steady_allocator() -> bool:
    """Keep freed activation memory in the heap instead of returning it to the OS (glibc).

    Measured here: with glibc's defaults, every forward pass of MobileNetV2 at 224×224 mmaps
    and unmaps its large activations and pays the page faults, and how much depends on the
    process's allocation history, so the same network timed 9.7 ms in one process and 6.3 ms
    in another. Fixing ``M_TRIM_THRESHOLD``/``M_MMAP_THRESHOLD`` gives the steady state of a
    long-running inference process, the same in every process. Idempotent; returns whether
    it applied (False off glibc).
    """
    global _STEADY
    if _STEADY:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3 (malloc.h); 32 MiB is glibc's maximum.
        _STEADY = bool(libc.mallopt(-1, 1 << 30)) and bool(libc.mallopt(-3, 32 << 20))
    except (OSError, AttributeError):
        _STEADY = False
    return _STEADY


RUNTIMES: Registry[str] = Registry("latency runtime", {
    "torch": "eager PyTorch, the network as trained",
    "onnxruntime": "ONNX Runtime on the exported model (the deployment runtime)",
})


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto`` → ``onnxruntime`` (the runtime the exported model ships in) when onnx and
    onnxruntime are installed and latency is timed on the CPU, else ``torch``; any other
    name is returned as given (:func:`check_runtime` checks it)."""
    if runtime != "auto":
        return runtime
    import importlib.util

    have = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    return "onnxruntime" if have and torch.device(device).type == "cpu" else "torch"


def check_runtime(runtime: str, device: str) -> None:
    """Refuse a latency runtime that is unknown or cannot time on ``device``.

    Raises:
        ValueError: ``runtime`` is not one of :data:`RUNTIMES`, or is onnxruntime (its CPU
            session) on a device other than the CPU.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {list(RUNTIMES)}, but got {runtime!r}.")
    if runtime != "torch" and torch.device(device).type != "cpu":
        raise ValueError(f"--latency-runtime {runtime} measures on the CPU, but the latency "
                         f"device is {device}; give --latency-device cpu.")


def measure_latency(model: nn.Module, input_size: int = 224, *, device: str = "cpu",
                    threads: int = 1, batch_size: int = 1, warmup: int = 5, repeats: int = 20,
                    channels_last: bool = False, runtime: str = "torch") -> Latency:
    """Time ``model`` on ``device``: fixed threads, warm-up, median of ``repeats`` runs.

    ``runtime="onnxruntime"`` times the model as deployed through ONNX: exported (a CPU
    copy, opset of the TorchScript exporter) and run in an onnxruntime CPU session with
    ``threads`` intra-op threads, sequential execution and all graph optimisations.

    CUDA runs are timed by CUDA events around each run (the GPU's clock), after a synchronised
    warm-up. The model is put in eval mode and run under ``inference_mode``; it is not
    otherwise changed (a copy moves to the device). The process's allocator is put in its
    steady state first (:func:`steady_allocator`).
    """
    if repeats < 3:
        raise ValueError(f"`repeats` must be >= 3 for a median and spread, but got {repeats=}.")
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {list(RUNTIMES)}, but got {runtime!r}.")
    steady_allocator()
    if runtime == "onnxruntime":
        return _onnxruntime_latency(model, input_size, threads, batch_size, warmup, repeats)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    m = model
    if next(model.parameters()).device != dev:
        m = copy.deepcopy(model).to(dev)
    was_training = m.training
    m.eval()
    x = torch.randn(batch_size, 3, input_size, input_size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cuda = dev.type == "cuda"
    times: list[float] = []
    with cpu_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            m(x)
        if cuda:
            torch.cuda.synchronize(dev)
        for _ in range(repeats):
            if cuda:
                with cuda_timer(dev) as ms:
                    m(x)
                times.append(ms[0] / batch_size)
                continue
            t0 = time.perf_counter()
            m(x)
            times.append((time.perf_counter() - t0) * 1000.0 / batch_size)
    m.train(was_training)
    q = statistics.quantiles(times, n=10)
    return Latency(statistics.median(times), q[0], q[-1], repeats, str(dev), threads,
                   input_size)


def quiet_latency_ms(model: nn.Module, input_size: int = 224, *, device: str = "cpu",
                     threads: int = 1, runtime: str = "torch", turns: int = 3) -> float:
    """The least of ``turns`` medians of 15 runs of :func:`measure_latency` (ms): noise from
    other processes only adds time, so the least median is the machine's quiet speed (on this
    VM one median of the same network ranged 3.95-6.14 ms over four tries, the least of three
    6.50-6.81 ms)."""
    turn = _turn(model, input_size, device, threads, runtime)
    return min(turn() for _ in range(turns))


def latency_ratio(model: nn.Module, reference: nn.Module, input_size: int = 224, *,
                  device: str = "cpu", threads: int = 1, runtime: str = "torch",
                  turns: int = 3) -> float:
    """``model``'s latency as a fraction of ``reference``'s, the two timed in alternation: each
    turn takes the median of 15 runs of each, and the least of each's medians are divided.
    A slow or fast spell of the machine over minutes then moves both sides of the ratio alike
    (on this VM one network's least-of-three median went from 10.7 to 12.7-16.9 ms within five
    minutes, bench/results/latency_vs_uniform.json), and a spike within a turn, which only adds
    time, is dropped from either side (the median of the turns' ratios kept such spikes: the
    dense network timed against itself came out 0.96, a pruned one 0.79 against 0.56 by the
    least of three turns; bench/results/latency_fit_runs/)."""
    return LatencyRatio(reference, input_size, device=device, threads=threads, runtime=runtime,
                        turns=turns)(model)


class LatencyRatio:
    """:func:`latency_ratio` of any model to one ``reference``, called as ``ratio(model)``: the
    reference is set up once for all the models (its onnxruntime session opened once, not once
    per model). ``reference_ms`` is the least of the reference's medians so far: its quiet
    time (:func:`quiet_latency_ms`), at no extra cost."""

    def __init__(self, reference: nn.Module, input_size: int = 224, *, device: str = "cpu",
                 threads: int = 1, runtime: str = "torch", turns: int = 3) -> None:
        self._timing = (input_size, device, threads, runtime)
        # The models timed against the reference are its pruned variants, as a rule: their
        # graphs are made from the reference's (a model of another network is exported).
        self._skeleton = (OnnxSkeleton.of(reference, input_size) if runtime == "onnxruntime"
                          else None)
        self._ref = _turn(reference, *self._timing, self._skeleton)
        self.turns = turns
        self.reference_ms = math.inf

    def __call__(self, model: nn.Module) -> float:
        turn = _turn(model, *self._timing, self._skeleton)
        ms = [(turn(), self._ref()) for _ in range(self.turns)]
        ref = min(r for _, r in ms)
        self.reference_ms = min(self.reference_ms, ref)
        return min(m for m, _ in ms) / ref


def _turn(model: nn.Module, input_size: int, device: str, threads: int,
          runtime: str, skeleton: OnnxSkeleton | None = None) -> Callable[[], float]:
    """A turn of the functions above: one median of 15 runs after 3 warm-up runs. An
    onnxruntime model is exported (or made from ``skeleton``) and its session opened once, not
    on every turn."""
    if runtime == "onnxruntime":
        sess, feed = ort_session(model, input_size, threads, skeleton=skeleton)
        return lambda: statistics.median(_session_times(sess, feed, 3, 15))
    return lambda: measure_latency(model, input_size, device=device, threads=threads, warmup=3,
                                   repeats=15, runtime=runtime).median_ms


def export_onnx(model: nn.Module, input_size: int, f, *, batch_size: int = 1,
                dynamic_batch: bool = False,
                fold_batch_norms: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """Export a CPU copy of ``model`` (eval mode, contiguous) to ONNX at ``f`` (a path or a
    binary file object) with the TorchScript exporter; input ``input``, output ``logits``.
    With ``fold_batch_norms=False`` the batch norms stay nodes of their own and no constant is
    folded, so that every initializer is a named parameter or buffer (:class:`OnnxSkeleton`).

    Returns:
        The CPU copy and the example input it was traced with.
    """
    import warnings

    m = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    x = torch.randn(batch_size, 3, input_size, input_size)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    mode = torch.onnx.TrainingMode.EVAL if fold_batch_norms else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(m, (x,), f, input_names=["input"], output_names=["logits"],
                          dynamic_axes=axes, dynamo=False, training=mode,
                          do_constant_folding=fold_batch_norms)
    return m, x


# Operators whose output shape follows from their inputs and initializers alone: a graph of
# these runs a pruned network once its initializers (and depthwise convs' groups) are swapped.
_SHAPE_FREE_OPS = frozenset({
    "Conv", "BatchNormalization", "Gemm", "MatMul", "Relu", "Clip", "LeakyRelu", "Sigmoid",
    "HardSigmoid", "HardSwish", "Tanh", "Erf", "Add", "Sub", "Mul", "Div", "GlobalAveragePool",
    "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean", "Flatten", "Concat", "Identity",
    "Dropout", "Constant"})


class OnnxSkeleton:
    """A network's ONNX graph exported once, from which its pruned variants (the same modules
    with fewer channels) are made without exporting each: a variant runs the same nodes with its
    own initializers and, for grouped convs, its own group count. The TorchScript exporter takes
    ~0.25 s a network here (traced, then optimised) where the swap takes milliseconds: 46
    exports were 15 of a latency table's 22 s.

    The graph keeps its batch norms (exported without constant folding, so that every
    initializer is a named parameter or buffer); onnxruntime folds them into the convs when it
    optimises the session, which then runs the same kernels as the deployed export's (tested:
    the same optimised nodes, and the same outputs as the pruned network in PyTorch).
    :meth:`of` returns ``None`` for a graph with an operator outside ``_SHAPE_FREE_OPS`` (a
    reshape to a constant shape would not follow the channels) or an initializer that is no
    parameter; :func:`ort_session` then exports each network."""

    def __init__(self, proto: Any, keys: set[str], batch_size: int, input_size: int) -> None:
        self.proto = proto
        self.keys = keys  # the network's state_dict keys: a variant has the same
        self.shape = (batch_size, input_size)

    @classmethod
    def of(cls, model: nn.Module, input_size: int, batch_size: int = 1) -> "OnnxSkeleton | None":
        import io

        import onnx

        distinct = copy.deepcopy(model).cpu()
        with torch.no_grad():  # distinct values: the exporter merges equal initializers
            for t in distinct.state_dict().values():
                if t.is_floating_point():
                    t.copy_(torch.rand_like(t) + 0.5)
        buf = io.BytesIO()
        m, _ = export_onnx(distinct, input_size, buf, batch_size=batch_size,
                           fold_batch_norms=False)
        proto = onnx.load_from_string(buf.getvalue())
        params = m.state_dict()
        modules = dict(m.named_modules())
        if (any(n.op_type not in _SHAPE_FREE_OPS for n in proto.graph.node)
                or any(i.name not in params for i in proto.graph.initializer)
                or any(not isinstance(modules.get(_conv_name(n)), nn.Conv2d)
                       for n in proto.graph.node if n.op_type == "Conv")):
            return None
        del proto.graph.value_info[:]  # the dense network's intermediate shapes
        return cls(proto, set(params), batch_size, input_size)

    def model_bytes(self, model: nn.Module) -> bytes | None:
        """The serialised graph of ``model``, a pruned variant of the skeleton's network;
        ``None`` if ``model``'s parameters and buffers are named otherwise (another network)."""
        from onnx import numpy_helper

        params = model.state_dict()
        if set(params) != self.keys:
            return None
        modules = dict(model.named_modules())
        out = type(self.proto)()
        out.CopyFrom(self.proto)
        for init in out.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(
                params[init.name].detach().cpu().numpy(), init.name))
        for node in out.graph.node:
            if node.op_type == "Conv":
                conv = modules[_conv_name(node)]
                for attr in node.attribute:
                    if attr.name == "group":
                        attr.i = int(conv.groups)
        data: bytes = out.SerializeToString()
        return data


def _conv_name(node: Any) -> str:
    """The module name of an exported Conv node's conv: its weight initializer is named
    ``<module>.weight``."""
    return str(node.input[1].rpartition(".")[0])


def ort_session(model: nn.Module, input_size: int, threads: int, *, batch_size: int = 1,
                profile_prefix: str | None = None,
                skeleton: OnnxSkeleton | None = None) -> tuple[Any, dict[str, Any]]:
    """``model`` exported to ONNX (:func:`export_onnx`) in an onnxruntime CPU session as it is
    deployed: ``threads`` intra-op threads, sequential execution, all graph optimisations;
    with ``profile_prefix``, onnxruntime's per-node profiling on. With ``skeleton`` (of the
    network ``model`` was pruned from, at this batch and input size), its graph is taken
    instead of a new export. Returns the session and a feed of one random batch."""
    import io

    import onnxruntime as ort

    data = (skeleton.model_bytes(model)
            if skeleton is not None and skeleton.shape == (batch_size, input_size) else None)
    x = torch.randn(batch_size, 3, input_size, input_size)
    if data is None:
        buf = io.BytesIO()
        _, x = export_onnx(model, input_size, buf, batch_size=batch_size)
        data = buf.getvalue()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess, {"input": x.numpy()}


def _onnxruntime_latency(model: nn.Module, input_size: int, threads: int, batch_size: int,
                         warmup: int, repeats: int) -> Latency:
    sess, feed = ort_session(model, input_size, threads, batch_size=batch_size)
    times = [t / batch_size for t in _session_times(sess, feed, warmup, repeats)]
    q = statistics.quantiles(times, n=10)
    return Latency(statistics.median(times), q[0], q[-1], repeats, "cpu", threads, input_size,
                   runtime="onnxruntime")


def _session_times(sess: Any, feed: dict, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` runs of an onnxruntime session after ``warmup`` runs."""
    for _ in range(warmup):
        sess.run(None, feed)
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times
