"""Latency predicted from a per-layer lookup table (NetAdapt-style).

Each conv/linear layer *slot* of a space (e.g. ``features.5.conv.0.0``) is timed, from the
layer's start to the next layer's (so with its BN, activation, residual add or pooling), on a
grid of its input and output channel counts at the deployment input size; a candidate's
latency is the sum of its slots' times, bilinearly interpolated on the grid, through a line
calibrated on whole networks timed without hooks. Tables are cached on disk keyed by device,
torch version, threads, input size and space; a table file can be copied to another machine
(measure on the target, search anywhere).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn

from prunetune.spaces import LayerShape, SearchSpace

from ._cost import cpu_threads, measure_latency, steady_allocator
from ._io import atomic_write_text
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
    """Per-slot latency grids (ms) and a calibrated offset; JSON-serialisable."""

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
        return sum(self._slot_ms(l.name, l.in_channels, l.out_channels) for l in layers)

    def predict(self, space: SearchSpace, policy: Mapping[str, float]) -> float:
        return self.predict_channels(space.layers(space.channels(policy), self.key["input_size"]))

    def anchor(self, space: SearchSpace, dense_ms: float) -> float:
        """Rescale the table so that it predicts ``dense_ms`` for the dense network — its time
        on this machine now — and return the factor. Ratios between predictions are kept.

        A table's milliseconds are the machine's speed while it was built: on this VM that
        swings by up to 1.5× between minutes (bench/README.md, "The latency table's error").
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


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """``(scale, offset)`` of ``measured ≈ scale × layer sum + offset`` by least squares.

    Timing noise larger than the spread of the candidates (small networks on a busy machine)
    can flatten or tilt the line: a table that calls all networks equally fast, or smaller ones
    slower, is useless. A slope outside [0.2, 5] (fits on quiet cores: 0.5-1.1) falls back to
    a line through the origin.
    """
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    if 0.2 <= slope <= 5.0:
        return slope, my - slope * mx
    return my / mx, 0.0


def _interp1(xs: list[int], ys: list[float], x: float) -> float:
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2) if len(xs) > 1 else 0
    if len(xs) == 1:
        return ys[0]
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + t * (ys[i + 1] - ys[i])


def _interp2(xs: list[int], ys: list[int], zs: list[list[float]], x: float, y: float) -> float:
    col = [_interp1(ys, row, y) for row in zs]
    return _interp1(xs, col, x)


def table_key(space: SearchSpace, input_size: int, device: str, threads: int) -> dict:
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    return {"version": TABLE_VERSION, "space": space.name,
            "config": {k: v for k, v in space.config().items()
                       if k in ("width_mult", "num_classes", "round_to")},
            "input_size": input_size, "device": dev.type, "device_name": name,
            "threads": threads, "torch": torch.__version__}


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
    ref = {l.name: l for l in space.layers(full, size)}
    owner: dict[str, list] = {n: [None, None] for n in ref}
    for g in space.groups:
        if g.channels <= space.round_to:
            continue
        pert = {l.name: l for l in space.layers(dict(full, **{g.name: space.round_to}), size)}
        for n, l in pert.items():
            if l.in_channels != ref[n].in_channels:
                owner[n][0] = g.name
            if l.out_channels != ref[n].out_channels:
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
    off on this CPU).
    """
    x = torch.randn(1, 3, input_size, input_size, device=dev)
    marks: list[tuple[str, float]] = []
    times: dict[str, list[float]] = {n: [] for n in names}

    def mark(n: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            sync()
            marks.append((n, time.perf_counter()))
        return hook

    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_pre_hook(mark(n)) for n in names]
    model.eval()
    with torch.inference_mode():
        for rnd in range(2 + repeats):  # two warm-up passes
            marks.clear()
            model(x)
            sync()
            marks.append(("", time.perf_counter()))
            if rnd >= 2:
                for (n, t0), (_, t1) in zip(marks, marks[1:]):
                    times[n].append(t1 - t0)
    for h in handles:
        h.remove()
    return {n: statistics.median(t) * 1000.0 for n, t in times.items()}


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
                        threads: int = 1, grid_points: int = 6, repeats: int = 5,
                        calibrate: int = 8, seed: int = 0,
                        log: Callable[[str], None] = print) -> LatencyTable:
    """Time every layer slot on a grid of its channel counts, and calibrate.

    ``grid_points²`` networks (the groups coloured by :func:`_colour`, each colour at its grid
    index of :func:`_grid_index`) run end to end with a forward pre-hook on each conv/linear
    layer; a slot is timed from its layer's start to the next one's (see :func:`_slot_times`).
    Each slot's grid is then made non-decreasing in its channel counts (:func:`_monotone`):
    this VM's slow spells (timings drift 10-35% between minutes) could otherwise make a
    narrower layer look slower. The dense network, the narrowest and ``calibrate`` random
    candidates then run without hooks, and a least-squares line (scale × layer sum + offset)
    through them absorbs what the hooks cost.
    """
    t0 = time.perf_counter()
    steady_allocator()
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    owners = _slot_groups(space, input_size)
    colour = _colour(space, owners)
    points = _grid_size(grid_points, max(colour.values(), default=0) + 1)
    grids = {g.name: _grid(_values(g.channels, space.round_to), points) for g in space.groups}
    full = space.full_channels()
    shapes = space.layers(full, input_size)
    names = [l.name for l in shapes]
    base = space.build_model().to(dev)
    samples: dict[tuple[int, int], dict[str, float]] = {}
    with cpu_threads(threads):
        for i in range(points):
            for j in range(points):
                ch = {g: grids[g][min(_grid_index(colour[g], i, j, points), len(grids[g]) - 1)]
                      for g in grids}
                net = prune_to_channels(base, space, ch, importance=None, input_size=32)
                samples[(i, j)] = _slot_times(net, names, input_size, dev, repeats, sync)

    def at(n: str, *fixed: tuple[str, int]) -> float:
        """Slot ``n``'s time in a network that put each (group, grid index) of ``fixed``."""
        ij = next(ij for ij in samples
                  if all(_grid_index(colour[g], *ij, points) == a for g, a in fixed))
        return samples[ij][n]

    slots: dict = {}
    for shape in shapes:
        gin, gout = owners[shape.name]
        n = shape.name
        depthwise = shape.groups > 1
        if gin and gout and not depthwise and gin != gout:
            gi, go = grids[gin], grids[gout]
            ms = [[at(n, (gin, a), (gout, b)) for b in range(len(go))] for a in range(len(gi))]
            slots[n] = {"in_group": gin, "out_group": gout, "cin": gi, "cout": go, "ms": ms}
        elif gout or (depthwise and gin):
            g = gout or gin
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
    table = LatencyTable(table_key(space, input_size, device, threads), slots)
    rng = random.Random(seed)
    cal = [full, space.channels(space.uniform(space.low))] + [
        space.channels({n: rng.choice(space.ratio_choices()) for n in space.group_names})
        for _ in range(calibrate)]
    cal_ms = [measure_latency(prune_to_channels(base, space, ch, importance=None,
                                                input_size=32), input_size, device=device,
                              threads=threads, warmup=3, repeats=max(repeats, 15)).median_ms
              for ch in cal]
    sums = [table.layer_sum(space.layers(ch, input_size)) for ch in cal]
    table.scale, table.offset_ms = fit_line(sums, cal_ms)
    table.calibration = [{"measured_ms": y, "layer_sum_ms": x} for x, y in zip(sums, cal_ms)]
    table.build_seconds = time.perf_counter() - t0
    log(f"latency table: {len(slots)} layer slots, built in {table.build_seconds:.1f} s "
        f"({table.key['device']}, {threads} thread(s), {input_size}x{input_size}); "
        f"fit: {table.scale:.3f} x layer sum {table.offset_ms:+.3f} ms")
    return table


def table_path(key: Mapping, folder: str) -> str:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(folder, f"latency-{key['space']}-{key['input_size']}px-"
                                f"{key['device']}-{key['threads']}t-{h}.json")


def get_latency_table(space: SearchSpace, input_size: int, *, folder: str, device: str = "cpu",
                      threads: int = 1, log: Callable[[str], None] = print,
                      **build_kwargs) -> LatencyTable:
    """The cached table for this space, input size, device, torch version and threads, or a
    newly built (and cached) one."""
    key = table_key(space, input_size, device, threads)
    path = table_path(key, folder)
    if os.path.isfile(path):
        with open(path) as f:
            table = LatencyTable.from_json(f.read())
        if table.key == key:
            log(f"latency table: cached {path}")
            return table
    table = build_latency_table(space, input_size, device=device, threads=threads, log=log,
                                **build_kwargs)
    atomic_write_text(path, table.to_json())
    return table
