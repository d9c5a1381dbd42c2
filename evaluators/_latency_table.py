"""Latency predicted from a per-layer lookup table (NetAdapt-style).

Each conv/linear layer *slot* of a space (e.g. ``features.5.conv.0.0``) is timed, from the
layer's start to the next layer's (so with its BN, activation, residual add or pooling), on a
grid of its input and output channel counts at the deployment input size; a candidate's
latency is the sum of its slots' times, bilinearly interpolated on the grid, through a line
calibrated on whole networks timed without instrumentation. Two runtimes: eager PyTorch
(slots timed by forward pre-hooks) and onnxruntime on the CPU (the exported network's
optimised graph, slots timed by onnxruntime's node profiler). Tables are cached on disk keyed
by runtime, device, library versions, threads, input size and space; a table file can be
copied to another machine (measure on the target, search anywhere).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from prunetune.spaces import LayerShape, SearchSpace

from ._cost import (LatencyRatio, OnnxSkeleton, check_runtime, cpu_threads, ort_session,
                    steady_allocator)
from ._io import atomic_write_text
from ._progress import Eta
from ._prune import prune_to_channels

TABLE_VERSION = 3


def _values(base: int, round_to: int) -> list[int]:
    """Every channel count a group of ``base`` channels can take."""
    vals = list(range(round_to, base, round_to)) if base > round_to else []
    return vals + [base]


def _grid(values: list[int], points: int) -> list[int]:
    if len(values) <= points:
        return values
    idx = [round(i * (len(values) - 1) / (points - 1)) for i in range(points)]
    return sorted({values[i] for i in idx})


@dataclass
class LatencyTable:
    """Per-slot latency grids (ms) and the calibration ``scale × layer sum + offset_ms``;
    JSON-serialisable."""

    key: dict
    slots: dict  # name -> {"in_group", "out_group", "cin": [...], "cout": [...], "ms": [[...]]}
    offset_ms: float = 0.0
    scale: float = 1.0
    build_seconds: float = 0.0
    calibration: list = field(default_factory=list)

    def _slot_ms(self, name: str, cin: int, cout: int) -> float:
        s = self.slots[name]
        if s["cin"] is None:  # depthwise or fixed-input: one axis
            return _interp1(s["cout"], s["ms"], cout)
        if s["cout"] is None:
            return _interp1(s["cin"], s["ms"], cin)
        return _interp2(s["cin"], s["cout"], s["ms"], cin, cout)

    def predict_channels(self, layers: list[LayerShape]) -> float:
        """Predicted latency (ms) of a network given as layer shapes."""
        return self.offset_ms + self.scale * self.layer_sum(layers)

    def layer_sum(self, layers: list[LayerShape]) -> float:
        return sum(self._slot_ms(layer.name, layer.in_channels, layer.out_channels)
                   for layer in layers)

    def built_here(self, device: str) -> bool:
        """Whether the table was built on this machine's ``device`` (the same kind and model of
        CPU or GPU, whatever the library versions): only then do timings taken here speak for
        it (anchoring, the latency check, the measured pick)."""
        dev = torch.device(device)
        return (self.key.get("device") == dev.type
                and self.key.get("device_name") == _device_name(dev))

    def predict(self, space: SearchSpace, policy: Mapping[str, float]) -> float:
        return self.predict_channels(space.layers(space.channels(policy), self.key["input_size"]))

    def anchor(self, space: SearchSpace, dense_ms: float) -> float:
        """Rescale the table so that it predicts ``dense_ms`` for the dense network — its time
        on this machine now — and return the factor. Ratios between predictions are kept.

        A table's milliseconds are the machine's speed while it was built: on this VM that
        swings by up to 1.5× between minutes, either way (bench/README.md, "The latency table's
        error"); a cached table keeps its build's speed for good, an anchor costs one run.
        """
        factor = dense_ms / self.predict_channels(
            space.layers(space.full_channels(), self.key["input_size"]))
        self.scale *= factor
        self.offset_ms *= factor
        return factor

    def to_json(self) -> str:
        return json.dumps({"version": TABLE_VERSION, "key": self.key, "slots": self.slots,
                           "offset_ms": self.offset_ms, "scale": self.scale,
                           "build_seconds": self.build_seconds,
                           "calibration": self.calibration})

    @classmethod
    def from_json(cls, text: str) -> "LatencyTable":
        d = json.loads(text)
        if d.get("version") != TABLE_VERSION:
            raise ValueError(f"latency table version {d.get('version')} is not "
                             f"{TABLE_VERSION}; rebuild it.")
        return cls(d["key"], d["slots"], d["offset_ms"], d.get("scale", 1.0),
                   d.get("build_seconds", 0.0), d.get("calibration", []))


def fit_offset(sums: list[float], ratios: list[float], dense_sum: float) -> float:
    """The offset ``c`` (in layer-sum milliseconds) that makes ``(sum + c) / (dense_sum + c)``
    best match each network's measured latency ``ratio`` to the dense network (least squares
    on ``ratio × (dense_sum + c) − (sum + c)``).

    ``c`` is what a whole run costs beyond its slots: negative where the instrumentation adds
    time to every slot (hooks, onnxruntime's profiler), positive for a session's fixed
    overhead. Ratios timed in alternation with the dense network do not move with the
    machine's speed, so slow spells during the calibration cannot tilt it (a line fitted on
    absolute timings taken one after another could: bench/README.md). A ``c`` outside
    [−0.9 × the smallest sum, ``dense_sum``] (timing noise larger than the networks' spread)
    falls back to 0: latency proportional to the layer sum.
    """
    den = sum((1 - r) ** 2 for r in ratios)
    c = sum((1 - r) * (r * dense_sum - x) for x, r in zip(sums, ratios)) / den if den else 0.0
    return c if -0.9 * min(sums) <= c <= dense_sum else 0.0


def _interp1(xs: list[int], ys: list[float], x: float) -> float:
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2) if len(xs) > 1 else 0
    if len(xs) == 1:
        return ys[0]
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + t * (ys[i + 1] - ys[i])


def _interp2(xs: list[int], ys: list[int], zs: list[list[float]], x: float, y: float) -> float:
    col = [_interp1(ys, row, y) for row in zs]
    return _interp1(xs, col, x)


def table_key(space: SearchSpace, input_size: int, device: str, threads: int,
              runtime: str = "torch") -> dict:
    dev = torch.device(device)
    name = _device_name(dev)
    key = {"version": TABLE_VERSION, "space": space.name,
           "config": {k: v for k, v in space.config().items()
                      # sha256: a file network's source (spaces.FileSpace)
                      if k in ("width_mult", "num_classes", "round_to", "sha256")},
           "input_size": input_size, "device": dev.type, "device_name": name,
           "threads": threads, "torch": torch.__version__, "runtime": runtime}
    if runtime == "onnxruntime":
        import onnxruntime

        key["onnxruntime"] = onnxruntime.__version__
    return key


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def _slot_groups(space: SearchSpace, size: int) -> dict[str, tuple[str | None, str | None]]:
    """Which group sets each layer's input and output channels (found by perturbing groups)."""
    full = space.full_channels()
    ref = {layer.name: layer for layer in space.layers(full, size)}
    owner: dict[str, list] = {n: [None, None] for n in ref}
    for g in space.groups:
        if g.channels <= space.round_to:
            continue
        cut = dict(full, **{g.name: space.round_to})
        pert = {layer.name: layer for layer in space.layers(cut, size)}
        for n, layer in pert.items():
            if layer.in_channels != ref[n].in_channels:
                owner[n][0] = g.name
            if layer.out_channels != ref[n].out_channels:
                owner[n][1] = g.name
    return {n: (a, b) for n, (a, b) in owner.items()}


def _colour(space: SearchSpace, owners: Mapping[str, tuple]) -> dict[str, int]:
    """Colour the groups so that no layer reads and writes groups of one colour (greedy, in
    network order). MobileNetV2 needs two colours; ResNets, whose downsample convs close
    triangles, need three."""
    adj: dict[str, set] = {g: set() for g in space.group_names}
    for gin, gout in owners.values():
        if gin and gout and gin != gout:
            adj[gin].add(gout)
            adj[gout].add(gin)
    colour: dict[str, int] = {}
    for g in space.group_names:
        used = {colour[h] for h in adj[g] if h in colour}
        colour[g] = next(c for c in range(len(adj) + 1) if c not in used)
    return colour


def _grid_index(c: int, i: int, j: int, points: int) -> int:
    """Grid index of colour ``c`` in network (i, j): i, j, then (i + (c − 1)·j) mod points.

    Any two colours take every pair of grid indices over the points² networks when points is
    prime and above the colour count − 2 (for three colours, whatever points is): a Latin
    square construction of a covering array, so every (input, output) channel pair of every
    slot is timed.
    """
    return i if c == 0 else j if c == 1 else (i + (c - 1) * j) % points


def _grid_size(points: int, colours: int) -> int:
    """``points``, or the next prime that covers ``colours`` (see :func:`_grid_index`)."""
    if colours <= 3:
        return points
    n = max(points, colours - 1)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def _slot_times(model: nn.Module, names: list[str], input_size: int, dev: torch.device,
                repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median time (ms) of each slot of ``model``, measured inside whole-network forward
    passes run back to back, as a deployed network runs.

    A slot runs from its layer's start (a forward pre-hook) to the start of the next slot's
    layer, the last one to the end of the pass: every moment of the pass belongs to a slot,
    including what follows a layer and scales with its output (BN, activation, a residual add,
    pooling), so the slots sum to the whole pass. In-situ timings keep the memory traffic,
    allocation and cache state of the real network (isolated layer micro-benchmarks were 2×
    off on this CPU). On a GPU the marks are CUDA events recorded on the stream, with one
    synchronisation after the pass: kernels queue back to back as in deployment (a host clock
    would need a synchronisation at every mark, serialising launch and kernel).
    """
    x = torch.randn(1, 3, input_size, input_size, device=dev)
    cuda = dev.type == "cuda"
    marks: list[tuple[str, Any]] = []
    times: dict[str, list[float]] = {n: [] for n in names}

    def stamp() -> Any:
        if not cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(dev))
        return event

    def seconds(t0: Any, t1: Any) -> float:
        return t0.elapsed_time(t1) / 1000.0 if cuda else t1 - t0

    def mark(n: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            marks.append((n, stamp()))
        return hook

    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_pre_hook(mark(n)) for n in names]
    model.eval()
    with torch.inference_mode():
        for rnd in range(2 + repeats):  # two warm-up passes
            marks.clear()
            model(x)
            marks.append(("", stamp()))
            sync()
            if rnd >= 2:
                for (n, t0), (_, t1) in zip(marks, marks[1:]):
                    times[n].append(seconds(t0, t1))
    for h in handles:
        h.remove()
    return {n: statistics.median(t) * 1000.0 for n, t in times.items()}


def _module_path(node: str) -> str:
    """The module path of an onnxruntime node named by the TorchScript exporter's scopes, e.g.
    ``/features/features.1/conv/conv.0/conv.0.2/Clip_output_0_nchwc`` →
    ``features.1.conv.0.2``; ``""`` for nodes outside any module (``ReorderOutput``)."""
    segs = [p for p in node.split("/") if p][:-1]
    if not segs:
        return ""
    path, prev = segs[0], segs[0]
    for seg in segs[1:]:
        path += seg[len(prev):] if seg.startswith(prev + ".") else "." + seg
        prev = seg
    return path


def _leaf_call_order(model: nn.Module) -> dict[str, int]:
    """Each leaf module of ``model`` (by name) -> the order of its first call in eager
    execution."""
    order: dict[str, int] = {}

    def first_call(n: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            order.setdefault(n, len(order))
        return hook

    handles = [m.register_forward_pre_hook(first_call(n)) for n, m in model.named_modules()
               if not any(True for _ in m.children())]
    model.eval()
    with torch.inference_mode():
        model(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return order


def _ort_slot_times(model: nn.Module, names: list[str], input_size: int, threads: int,
                    repeats: int, skeleton: OnnxSkeleton | None = None) -> dict[str, float]:
    """Median time (ms) of each slot of ``model`` exported and run in onnxruntime (the
    deployed graph: BN folded, activations and residual adds fused into convs, NCHWc layout),
    from onnxruntime's node profiler.

    Each node of the optimised graph is given to a slot by its scope name: a node named after
    a leaf module belongs to the last layer that starts at or before that module in eager
    execution (``conv.0.2``, the ReLU6 a conv and its BN were fused into, belongs to
    ``conv.0.0``); a node named after no leaf module (a layout reorder, a flatten, a product in
    a block's own ``forward``) belongs to the node before it. As in :func:`_slot_times`, a slot
    runs from its first node's start to the next slot's, so the slots sum to the whole run.
    """
    order = _leaf_call_order(model)
    starts = sorted((order[n], n) for n in names)

    def slot_of(path: str) -> str | None:
        if path not in order:
            return None
        i = bisect.bisect_right(starts, (order[path], "\uffff")) - 1
        return starts[max(i, 0)][1]

    with tempfile.TemporaryDirectory() as tmp:
        sess, feed = ort_session(model, input_size, threads, skeleton=skeleton,
                                 profile_prefix=os.path.join(tmp, "prof"))
        for _ in range(2 + repeats):  # two warm-up runs
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    runs = [e for e in events if e.get("name") == "model_run"][2:]
    nodes = sorted((e["ts"], e["name"][:-len("_kernel_time")]) for e in events
                   if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    times: dict[str, list[float]] = {n: [] for n in names}
    slot_cache: dict[str, str | None] = {}
    for run in runs:
        t0, t1 = run["ts"], run["ts"] + run["dur"]
        inside = [(ts, nm) for ts, nm in nodes if t0 <= ts <= t1]
        acc = dict.fromkeys(names, 0.0)
        current = starts[0][1]
        for k, (ts, nm) in enumerate(inside):
            if nm not in slot_cache:
                slot_cache[nm] = slot_of(_module_path(nm))
            current = slot_cache[nm] or current
            end = inside[k + 1][0] if k + 1 < len(inside) else t1
            acc[current] += end - (t0 if k == 0 else ts)
        for n in names:
            times[n].append(acc[n])
    return {n: statistics.median(t) / 1000.0 for n, t in times.items()}


def _monotone(ms: list) -> list:
    """The grid made non-decreasing in its channel counts (both axes of a 2-D grid): each
    value becomes the least at or above it. Timing noise only ever adds time, so of two grid
    points the larger one's lower time is the better estimate for both; a table that called a
    narrower layer slower would steer the search the wrong way."""
    if not ms or not isinstance(ms[0], list):
        out = list(ms)
        for i in range(len(out) - 2, -1, -1):
            out[i] = min(out[i], out[i + 1])
        return out
    rows = [_monotone(r) for r in ms]
    cols = [_monotone(list(c)) for c in zip(*rows)]
    return [list(r) for r in zip(*cols)]


def build_latency_table(space: SearchSpace, input_size: int = 224, *, device: str = "cpu",
                        threads: int = 1, runtime: str = "torch", grid_points: int = 6,
                        repeats: int = 5, calibrate: int = 8, seed: int = 0,
                        log: Callable[[str], None] = print) -> LatencyTable:
    """Time every layer slot on a grid of its channel counts in ``runtime``, and calibrate.

    ``grid_points²`` networks (the groups coloured by :func:`_colour`, each colour at its grid
    index of :func:`_grid_index`) run end to end; a slot is timed from its layer's start to
    the next one's, by a forward pre-hook on each conv/linear layer in eager PyTorch
    (:func:`_slot_times`) or by onnxruntime's node profiler (:func:`_ort_slot_times`).
    Each slot's grid is then made non-decreasing in its channel counts (:func:`_monotone`):
    this VM's slow spells (timings drift 10-35% between minutes) could otherwise make a
    narrower layer look slower. The narrowest and ``calibrate`` random candidates then run
    without instrumentation, each timed in alternation with the dense network
    (:class:`LatencyRatio`); the offset that best matches those ratios (:func:`fit_offset`)
    absorbs what the instrumentation costs, and the dense network's quiet time (the least of
    its medians in those alternations) sets the scale.

    Raises:
        ValueError: ``runtime`` is unknown, or onnxruntime on a device other than the CPU.
    """
    check_runtime(runtime, device)
    t0 = time.perf_counter()
    steady_allocator()
    dev = torch.device(device)
    owners = _slot_groups(space, input_size)
    colour = _colour(space, owners)
    points = _grid_size(grid_points, max(colour.values(), default=0) + 1)
    grids = {g.name: _grid(_values(g.channels, space.round_to), points) for g in space.groups}
    full = space.full_channels()
    shapes = space.layers(full, input_size)
    names = [layer.name for layer in shapes]
    base = space.build_model().to(dev)
    log(f"latency table: timing {points * points} networks of {space.name} in {runtime} "
        f"({input_size}x{input_size}, {threads} thread(s))")
    with cpu_threads(threads):
        samples = _time_grid(space, base, names, grids, colour, points, input_size, dev,
                             threads, runtime, repeats, log)
    slots = _slots(shapes, owners, grids, colour, points, samples)
    table = LatencyTable(table_key(space, input_size, device, threads, runtime), slots)
    _calibrate(table, space, base, input_size, device, threads, runtime, calibrate, seed, log)
    table.build_seconds = time.perf_counter() - t0
    log(f"latency table: {len(slots)} layer slots, built in {table.build_seconds:.1f} s "
        f"({runtime}, {table.key['device']}, {threads} thread(s), {input_size}x{input_size}); "
        f"calibrated: {table.scale:.3f} x layer sum {table.offset_ms:+.3f} ms")
    return table


def _time_grid(space: SearchSpace, base: nn.Module, names: list[str],
               grids: dict[str, list[int]], colour: dict[str, int], points: int,
               input_size: int, dev: torch.device, threads: int, runtime: str, repeats: int,
               log: Callable[[str], None]) -> dict[tuple[int, int], dict[str, float]]:
    """Each slot's time (ms) in each of the ``points²`` grid networks, by grid position."""
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    samples: dict[tuple[int, int], dict[str, float]] = {}
    skeleton = OnnxSkeleton.of(base, input_size) if runtime == "onnxruntime" else None
    eta = Eta(points * points)
    for i in range(points):
        for j in range(points):
            ch = {g: grids[g][min(_grid_index(colour[g], i, j, points), len(grids[g]) - 1)]
                  for g in grids}
            net = prune_to_channels(base, space, ch, importance=None)
            samples[(i, j)] = (
                _slot_times(net, names, input_size, dev, repeats, sync) if runtime == "torch"
                else _ort_slot_times(net, names, input_size, threads, repeats, skeleton))
        log(f"  latency table: {(i + 1) * points}/{points * points} networks timed | "
            f"{eta.step(points)}")
    return samples


def _slots(shapes: list[LayerShape], owners: Mapping[str, tuple[str | None, str | None]],
           grids: dict[str, list[int]], colour: dict[str, int], points: int,
           samples: dict[tuple[int, int], dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The table's slots: each layer's times over the grids of the groups that set its input
    and output channels, made non-decreasing (:func:`_monotone`)."""

    def at(n: str, *fixed: tuple[str, int]) -> float:
        """Slot ``n``'s time in a network that put each (group, grid index) of ``fixed``."""
        ij = next(ij for ij in samples
                  if all(_grid_index(colour[g], *ij, points) == a for g, a in fixed))
        return samples[ij][n]

    slots: dict[str, dict[str, Any]] = {}
    for shape in shapes:
        gin, gout = owners[shape.name]
        n = shape.name
        depthwise = shape.groups > 1
        if gin and gout and not depthwise and gin != gout:
            gi, go = grids[gin], grids[gout]
            ms2 = [[at(n, (gin, a), (gout, b)) for b in range(len(go))] for a in range(len(gi))]
            slots[n] = {"in_group": gin, "out_group": gout, "cin": gi, "cout": go, "ms": ms2}
        elif g := gout or (gin if depthwise else None):
            ms = [at(n, (g, a)) for a in range(len(grids[g]))]
            slots[n] = {"in_group": gin, "out_group": gout, "cin": None, "cout": grids[g],
                        "ms": ms}
        elif gin:
            ms = [at(n, (gin, a)) for a in range(len(grids[gin]))]
            slots[n] = {"in_group": gin, "out_group": None, "cin": grids[gin], "cout": None,
                        "ms": ms}
        else:
            slots[n] = {"in_group": None, "out_group": None, "cin": None,
                        "cout": [shape.out_channels], "ms": [samples[(0, 0)][n]]}
    for slot in slots.values():
        slot["ms"] = _monotone(slot["ms"])
    return slots


def _calibrate(table: LatencyTable, space: SearchSpace, base: nn.Module, input_size: int,
               device: str, threads: int, runtime: str, calibrate: int, seed: int,
               log: Callable[[str], None]) -> None:
    """Set ``table``'s scale and offset from the narrowest and ``calibrate`` random networks,
    each timed whole against the dense ``base`` (:class:`LatencyRatio`, :func:`fit_offset`)."""
    rng = random.Random(seed)
    cal = [space.channels(space.uniform(space.low))] + [
        space.channels({n: rng.choice(space.ratio_choices()) for n in space.group_names})
        for _ in range(calibrate)]
    ratio = LatencyRatio(base, input_size, device=device, threads=threads, runtime=runtime)
    log(f"latency table: calibrating on {len(cal)} whole networks, each timed against the "
        f"dense one")
    eta, ratios = Eta(len(cal)), []
    for k, ch in enumerate(cal, 1):
        ratios.append(ratio(prune_to_channels(base, space, ch, importance=None)))
        progress = eta.step()
        if k % 3 == 0 or k == len(cal):
            log(f"  latency table: {k}/{len(cal)} calibration networks timed | {progress}")
    dense_ms = ratio.reference_ms
    sums = [table.layer_sum(space.layers(ch, input_size)) for ch in cal]
    dense_sum = table.layer_sum(space.layers(space.full_channels(), input_size))
    c = fit_offset(sums, ratios, dense_sum)
    table.scale = dense_ms / (dense_sum + c)
    table.offset_ms = table.scale * c
    table.calibration = [{"layer_sum_ms": dense_sum, "ratio": 1.0, "measured_ms": dense_ms}] + [
        {"layer_sum_ms": x, "ratio": r} for x, r in zip(sums, ratios)]


def table_path(key: Mapping, folder: str) -> str:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(folder, f"latency-{key['space']}-{key['input_size']}px-"
                                f"{key['device']}-{key['runtime']}-{key['threads']}t-{h}.json")


def get_latency_table(space: SearchSpace, input_size: int, *, folder: str, device: str = "cpu",
                      threads: int = 1, runtime: str = "torch",
                      log: Callable[[str], None] = print, **build_kwargs) -> LatencyTable:
    """The cached table for this space, input size, runtime, device, library versions and
    threads, or a newly built (and cached) one.

    Raises:
        ValueError: ``runtime`` is unknown, or onnxruntime on a device other than the CPU.
    """
    check_runtime(runtime, device)
    key = table_key(space, input_size, device, threads, runtime)
    path = table_path(key, folder)
    if os.path.isfile(path):
        with open(path) as f:
            table = LatencyTable.from_json(f.read())
        if table.key == key:
            log(f"latency table: cached {path}")
            return table
    table = build_latency_table(space, input_size, device=device, threads=threads,
                                runtime=runtime, log=log, **build_kwargs)
    atomic_write_text(path, table.to_json())
    log(f"latency table: saved {path} (copy it with --latency-table FILE)")
    return table
