"""One whole search as a library call: data → base → study → refinement → finals → summary.

    from prunetune.pipeline import SearchJob, run_search
    from prunetune.search import StudySettings, parse_budget

    job = SearchJob(budgets=[parse_budget("50%-FLOPs")], out="runs/a",
                    study=StudySettings(trials=40), input_size=32)
    summary = run_search(job)          # also written to runs/a/summary.json

The command line (:mod:`prunetune.cli`) only parses and checks options into a
:class:`SearchJob` and calls :func:`run_search`; the benchmarks call the same function. A
mistake of the caller's that is found only here (a Ray cluster that refuses us or lacks the
resources asked for, a run folder in use) is a :class:`SetupError`, raised before anything
is written.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from prunetune._text import first_line
from prunetune.evaluators import FinetuneConfig, ScoreConfig, SensitivityConfig
from prunetune.search import Budget, RefineSettings, StudySettings

Log = Callable[[str], None]


class SetupError(ValueError):
    """The job cannot start as given (cluster, resources, run folder); the message says the fix."""


@dataclass
class SearchJob:
    """Everything one search needs. Defaults are the command line's.

    Attributes:
        budgets: The limits (``search.parse_budget``); ``%`` budgets are of the dense base.
        out: Run folder (created; a study already in its storage is resumed).
        storage: Optuna storage URL (default: ``out/study.db``).
        model, space: Search-space name and its options (``width_mult``, ``low``, ``high``,
            ``step``, ``round_to``; ``num_classes`` comes from the data); or an ``nn.Module``
            whose current weights are the dense base (:class:`spaces.ModuleSpace`: no base is
            trained, and ``weights``/``checkpoint`` are not taken).
        data: ImageFolder / CIFAR-10 python root, ``None`` for the embedded digits, or data
            already in memory (an :class:`evaluators.ImageData`, e.g. from
            :func:`evaluators.from_datasets`).
        test_per_class: At most this many test images per class (quick benchmarks).
        weights, checkpoint, base_epochs: The dense base (torchvision weights name, state_dict
            file, or trained here for ``base_epochs``).
        input_size: Deployment input size for FLOPs and latency.
        latency: ``predict`` (lookup table), ``measure`` (in each trial) or ``off``.
        latency_runtime: ``torch`` (eager) or ``onnxruntime`` (the exported model, CPU): what
            latencies time, measured or predicted (the lookup table is built in it); ``auto``:
            onnxruntime when it is installed and latency is timed on the CPU, else torch.
        latency_table: A table file to use instead of building one.
        device, latency_device, precision: Where the driver's stages train and evaluate
            (``auto``: a GPU if torch sees one), where latency is measured (default: ``device``),
            and the training precision of every stage. Trials use GPUs only when
            ``study.gpus_per_trial`` > 0 (the command line defaults it to 1/workers on a GPU).
        address, cpus: Ray cluster to attach to (``None``: a local instance of ``cpus``).
        study, score, refine, finetune, sensitivity: The stages' own settings (the
            sensitivity pass runs when ``study.priors`` holds a ``sens:`` start point).
        final_top, final_baseline, export: Candidates given the final fine-tune, whether
            uniform width gets the same one, and ONNX export.
        final_on: Where the final fine-tunes run: ``driver`` (this process, on ``device``),
            ``ray`` (Ray tasks, each with a whole GPU when trials use GPUs, else
            :attr:`threads` CPUs) or ``auto`` (``ray`` when trials use GPUs and this process
            has none, else ``driver``); see :func:`final_resources`.
        dashboard_port: Serve optuna-dashboard on 127.0.0.1 here while searching.
        record: Extra JSON written into ``config.json`` (the command line's options).
    """

    budgets: Sequence[Budget]
    out: str
    study: StudySettings = field(default_factory=lambda: StudySettings(trials=40))
    score: ScoreConfig = field(default_factory=lambda: ScoreConfig(report_every=20))
    refine: RefineSettings = field(default_factory=RefineSettings)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    storage: str | None = None
    model: Any = "mobilenet_v2"  # str | torch.nn.Module
    space: dict[str, Any] = field(default_factory=dict)
    data: Any = None  # str | evaluators.ImageData | None
    image_size: int | None = None
    per_class: int | None = None
    test_per_class: int | None = None
    val_fraction: float = 0.1
    weights: str | None = None
    checkpoint: str | None = None
    base_epochs: int = 30
    input_size: int = 224
    latency: str = "predict"
    latency_table: str | None = None
    latency_threads: int = 1
    latency_runtime: str = "auto"
    device: str = "auto"
    latency_device: str | None = None
    precision: str = "auto"
    address: str | None = None
    cpus: int | None = None
    final_top: int = 1
    final_baseline: bool = True
    export: bool = True
    final_on: str = "auto"
    dashboard_port: int | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{os.path.abspath(os.path.join(self.out, 'study.db'))}"

    @property
    def threads(self) -> int:
        """CPUs (torch threads) of each trial."""
        return max(1, (self.cpus or os.cpu_count() or 1) // self.study.workers)

    @property
    def timing_device(self) -> str:
        """Where latency is timed: ``latency_device``, or ``device`` when it is not given."""
        return self.latency_device or self.device


def base_costs(space: Any, size: int, table: Any = None
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Costs (and, with a table, predicted latency) of the dense and the smallest network."""
    from prunetune.search import candidate_values

    return (candidate_values(space, space.uniform(space.high), size, table),
            candidate_values(space, space.uniform(space.low), size, table))


def check_budgets_early(job: SearchJob, space: Any) -> None:
    """Refuse, before a base is trained or a latency table built (each can take a minute), a
    FLOPs, MACs or params budget that no network of the space meets (of no rounding of
    ``--round-to-choices``, where it is searched) or the dense one already meets, and a latency
    budget that the dense network, timed once now, already meets (a copied table's budgets are
    another machine's: they wait for the table). The table's predictions are checked again
    once it is built."""
    from prunetune.evaluators import measure_latency
    from prunetune.search import check_feasible, feasible_round_to

    counted = [b for b in job.budgets if b.metric != "latency"]
    full, small = base_costs(space, job.input_size)
    check_feasible(counted, full, small)
    feasible_round_to(space, job.study.round_to_choices,
                      {b.metric: b.limit(full) for b in counted}, job.input_size)
    # A fraction below 1 of the dense network's latency is never met by it: nothing to time.
    timed = [b for b in job.budgets if b.metric == "latency"
             and not (b.relative and b.value < 1.0)]
    if timed and not job.latency_table:
        dense = measure_latency(space.build_model(), job.input_size,
                                device=job.timing_device,
                                threads=job.latency_threads, warmup=2, repeats=5,
                                runtime=job.latency_runtime)
        check_feasible(timed, {"latency": dense.median_ms}, {"latency": 0.0})


def load_latency_table(space: Any, input_size: int, *, path: str | None, device: str,
                       threads: int, runtime: str = "torch", log: Log = print) -> Any:
    """The table in ``path`` (checked against the space and its configuration, input size,
    threads and runtime), else the cached or newly built one for this machine; a table built on
    this machine (:meth:`LatencyTable.built_here`) is anchored to the dense network timed now
    (:meth:`LatencyTable.anchor`)."""
    from prunetune.evaluators import LatencyTable, cache_dir, get_latency_table, table_key

    if path:
        try:
            with open(path) as f:
                table = LatencyTable.from_json(f.read())
            k = table.key
            absent = [f for f in ("space", "config", "input_size", "threads", "device_name")
                      if f not in k]
            if absent:
                raise KeyError(f"its key lacks {', '.join(absent)}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SetupError(f"--latency-table {path!r} is not a prunetune latency table "
                             f"({type(e).__name__}: {e}); rebuild it with --latency predict.") \
                from None
        want = table_key(space, input_size, device, threads, runtime)
        if k["space"] != space.name or k["input_size"] != input_size:
            raise SetupError(f"--latency-table {path!r} is for {k['space']} at "
                             f"{k['input_size']}px, not {space.name} at {input_size}px; build "
                             f"one for this model and --input-size.")
        if k["config"] != want["config"]:
            def fmt(c: dict) -> str:
                return ", ".join(f"{a}={b}" for a, b in sorted(c.items()))
            raise SetupError(f"--latency-table {path!r} is for {space.name} with "
                             f"{fmt(k['config'])}, not {fmt(want['config'])}; build one with "
                             f"this model's --width, classes and --round-to.")
        if k["threads"] != threads:
            raise SetupError(f"--latency-table {path!r} was built at {k['threads']} thread(s), "
                             f"not --latency-threads {threads}; give --latency-threads "
                             f"{k['threads']}, or build one at {threads}.")
        if k.get("runtime", "torch") != runtime:
            raise SetupError(f"--latency-table {path!r} times {k.get('runtime', 'torch')}, not "
                             f"--latency-runtime {runtime}; build one in {runtime} (run with "
                             f"--latency-runtime {runtime} on the deployment machine).")
        log(f"latency table: {path} ({runtime}, {k['device_name']}, {k['threads']} thread(s))")
    else:
        table = get_latency_table(space, input_size, folder=os.path.join(cache_dir(), "latency"),
                                  device=device, threads=threads, runtime=runtime, log=log)
    if table.built_here(device):
        _anchor(table, space, input_size, device, threads, runtime, log)
    return table


TABLE_FILE = "latency_table.json"  # in the run folder: the table as the study was searched with
SENSITIVITY_FILE = "sensitivity.json"  # in the run folder: the measurement the study searched with


def study_table(table: Any, out: str, log: Log = print) -> Any:
    """The latency table a resumed run goes on with: the one its first run used, as anchored
    then (``out/latency_table.json``), else ``table``. The study's predicted latencies and
    its budget in milliseconds are in that table's units; re-anchored on each run, a relative
    budget moved with the machine's speed, and trials predicted under one anchor were judged
    against a limit set under another (a resumed run could find none of them within it)."""
    from prunetune.evaluators import LatencyTable

    try:
        with open(os.path.join(out, TABLE_FILE)) as f:
            saved = LatencyTable.from_json(f.read())
    except (OSError, ValueError, KeyError):
        return table
    if saved.key != table.key:
        what = sorted(k for k in set(saved.key) | set(table.key)
                      if saved.key.get(k) != table.key.get(k))
        log(f"latency table: the study was searched with a table of other {', '.join(what)}; "
            f"going on with that one ({TABLE_FILE}), so that its trials stay comparable")
    else:
        log(f"latency table: as this run first anchored it ({TABLE_FILE}; the study's "
            f"milliseconds)")
    return saved


def _anchor(table: Any, space: Any, input_size: int, device: str, threads: int, runtime: str,
            log: Log) -> None:
    """Scale a table of this machine to the dense network's time now (:meth:`LatencyTable.anchor`):
    a table's milliseconds are the machine's speed while it was built, which on a shared VM
    swings up to 1.5× between minutes. Budgets in milliseconds then mean this machine as it
    runs now."""
    from prunetune.evaluators import quiet_latency_ms

    dense_ms = quiet_latency_ms(space.build_model(), input_size, device=device, threads=threads,
                                runtime=runtime)
    factor = table.anchor(space, dense_ms)
    log(f"latency table: anchored to the dense network timed now, {dense_ms:.2f} ms (the "
        f"table's milliseconds x {factor:.3f})")


def start_ray(job: SearchJob, log: Log = print) -> None:
    """Start or attach to Ray, then check it can run the trials asked for."""
    from prunetune.search import init_ray

    try:
        log(init_ray(job.address, job.cpus or os.cpu_count() or 1, log=log))
    except Exception as e:  # noqa: BLE001 - Ray raises several kinds when it cannot attach
        if not job.address:
            raise
        first = first_line(e)
        raise SetupError(f"--address {job.address!r}: Ray could not attach ({first}); a "
                         f"cluster started with `ray start` uses token authentication (Ray >= "
                         f"2.59): run with RAY_AUTH_MODE=token and the head's token "
                         f"(RAY_AUTH_TOKEN, or ~/.ray/auth_token copied from the head).") from None
    check_resources(job)


FINAL_ON = ("auto", "driver", "ray")


def final_resources(job: SearchJob) -> dict[str, float] | None:
    """The Ray resources of each final fine-tune (``num_cpus``, ``num_gpus``), or ``None`` to
    fine-tune in this process on ``job.device`` (see :attr:`SearchJob.final_on`). ``job.device``
    must be resolved."""
    if job.final_on not in FINAL_ON:
        raise ValueError(f"`final_on` must be one of {list(FINAL_ON)}, but got "
                         f"{job.final_on!r}.")
    gpus = job.study.gpus_per_trial
    if job.final_on == "driver" or (job.final_on == "auto"
                                    and not (job.device == "cpu" and gpus > 0)):
        return None
    return {"num_cpus": job.threads, "num_gpus": 1.0 if gpus > 0 else 0.0}


def check_resources(job: SearchJob) -> None:
    """Refuse trials that the Ray instance can never schedule (they would wait forever)."""
    import ray

    res = ray.cluster_resources()
    gpus = job.study.gpus_per_trial
    if gpus > res.get("GPU", 0):
        raise SetupError(f"--gpus-per-trial {gpus:g} but the Ray cluster has "
                         f"{res.get('GPU', 0):g} GPU(s); add GPU nodes or drop "
                         f"--gpus-per-trial.")
    if job.threads > res.get("CPU", 0):
        raise SetupError(f"each trial needs {job.threads} CPU(s) (--cpus / --workers) but the "
                         f"Ray cluster has {res.get('CPU', 0):g}; lower --cpus or add nodes.")
    final = final_resources(job) if job.final_top > 0 else None
    if final and final["num_gpus"] > res.get("GPU", 0):
        raise SetupError(f"the final fine-tune runs as a Ray task with {final['num_gpus']:g} "
                         f"GPU (--final-on {job.final_on}) but the Ray cluster has "
                         f"{res.get('GPU', 0):g}; add a GPU node or give --final-on driver.")


def device_line(job: SearchJob) -> str:
    """Where each stage runs, in one line."""
    import torch

    from prunetune.evaluators import resolve_precision

    name = (torch.cuda.get_device_name(torch.device(job.device)) if job.device != "cpu"
            else "CPU")
    gpus = job.study.gpus_per_trial
    trials = f"{gpus:g} GPU each" if gpus > 0 else "CPU"
    final = final_resources(job)
    finals = (f"Ray tasks with {final['num_gpus']:g} GPU each" if final and final["num_gpus"]
              else "Ray tasks on CPU" if final else job.device)
    return (f"{job.device} ({name}), {resolve_precision(job.precision, job.device)} training; "
            f"trials on {trials}; final fine-tunes on {finals}; latency on "
            f"{job.timing_device} in {job.latency_runtime}")


@dataclass
class _Claim:
    """A run folder held by this process (``out/.lock``, flock'd) and the folders made for it.

    Taken before anything else, so that a second run into the folder is refused before it
    trains or starts anything. Until ``written`` (``config.json`` is about to be written), the
    run may still be refused for its input: then :meth:`release` takes away what the claim
    made, and nothing is left behind."""

    out: str
    lock: Any
    made: list[str]
    made_lock: bool
    written: bool = False

    @classmethod
    def take(cls, out: str) -> _Claim:
        made, d = [], os.path.abspath(out)
        while not os.path.exists(d):
            made.append(d)
            d = os.path.dirname(d)
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            for m in made:  # the parents made before the failure, deepest first
                try:
                    os.rmdir(m)
                except OSError:
                    pass
            raise SetupError(f"--out {out!r} cannot be made ({e.strerror or e}); give a "
                             f"folder in a writable place.") from None
        path = os.path.join(out, ".lock")
        made_lock = not os.path.exists(path)
        lock = open(path, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SetupError(f"--out {out!r} is in use by another prunetune process; wait for "
                             f"it or use another --out.") from None
        return cls(out, lock, made, made_lock)

    def release(self) -> None:
        if not self.written:
            if self.made_lock:
                os.remove(os.path.join(self.out, ".lock"))
            for d in self.made:  # deepest first; one that holds something else stays
                try:
                    os.rmdir(d)
                except OSError:
                    break
        self.lock.close()


def _run_identity(out: str) -> dict[str, str]:
    """The run of folder ``out``: its ``config.json``'s ``run_id`` (a new one for a new folder,
    or one made before runs had ids) and the folder's absolute path. The study records it
    (:func:`search.open_study`)."""
    import uuid

    try:
        with open(os.path.join(out, "config.json")) as f:
            run_id = json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        run_id = None
    return {"id": run_id or uuid.uuid4().hex, "out": os.path.abspath(out)}


def job_space(job: SearchJob, data: Any) -> Any:
    """The search space of ``job`` for ``data`` (its classes; a module is traced at the data's
    image size).

    Raises:
        SetupError: a module given with ``weights`` or ``checkpoint``.
        ValueError: the model or its options cannot make a space (the message says why).
    """
    import torch

    from prunetune.spaces import ModuleSpace, get_space

    if isinstance(job.model, torch.nn.Module):
        if job.weights or job.checkpoint:
            raise SetupError("a module's base weights are its own; give no weights or "
                             "checkpoint with it (load them into the module first).")
        return ModuleSpace(job.model, num_classes=data.num_classes,
                           trace_size=data.image_size, **job.space)
    return get_space(job.model, num_classes=data.num_classes, **job.space)


# Returned by run_search but not written to summary.json (pareto.json, the study hold them).
IN_MEMORY_ONLY = ("records", "refine", "front", "pick_record")


def run_search(job: SearchJob, log: Log = print) -> dict[str, Any]:
    """Run the whole search of ``job``; returns the summary (also ``out/summary.json``).

    The run folder is claimed first (a second run into it is refused before anything is
    trained or started), then the study in the storage is checked to be this run's.

    Raises:
        SetupError: the run folder is in use, the study belongs to another run folder, or the
            cluster or its resources refuse the job.
        evaluators.DataError, evaluators.CheckpointError, search.BudgetError: bad data, base
            or budget, found before anything is written.
    """
    claim = _Claim.take(job.out)
    try:
        return _search(job, claim, log)
    finally:
        claim.release()


@dataclass
class _Prepared:
    """What :func:`_prepare` found, for the stages after it: the resolved job, its data, space,
    base (on the CPU; ``base_dev`` its copy on the device), latency table, costs and budgets."""

    job: SearchJob
    run: dict[str, str]
    data: Any
    space: Any
    base: Any
    base_dev: Any
    source: str
    table: Any
    full: dict[str, float]
    limits: dict[str, float]
    dense: dict[str, float] = field(default_factory=dict)
    table_json: str | None = None
    sensitivity_json: str | None = None


@dataclass
class _Explored:
    """What the study (:func:`_explore`) hands on to the refinement, the pick and the finals."""

    problem: Any
    evaluator: Any
    settings: StudySettings
    study: Any
    records: list[dict[str, Any]]
    pareto: list[dict[str, Any]]


def _search(job: SearchJob, claim: _Claim, log: Log) -> dict[str, Any]:
    """The stages of :func:`run_search`: prepare → explore (the study) → refine and pick →
    finalize (fine-tune, export, summary)."""
    from prunetune.search import open_storage

    t_start = time.perf_counter()
    p = _prepare(_resolved(job), claim, log)
    _measure_base(p, log)
    _measure_sensitivity(p, log)
    problem, evaluator, settings = _study_parts(p)
    storage = open_storage(p.job.storage_url)
    log(f"study {settings.study_name!r}: {p.job.storage_url} (watch live: optuna-dashboard "
        f"{p.job.storage_url} --host 127.0.0.1)")
    dash = (start_dashboard(p.job.storage_url, p.job.dashboard_port, log)
            if p.job.dashboard_port else None)
    try:
        x = _explore(p, problem, evaluator, settings, storage, log)
        records, refined = _refine_and_pick(p, x, log)
        return _finalize(p, x, records, refined, t_start, log)
    finally:
        if dash is not None:
            dash.terminate()


def _resolved(job: SearchJob) -> SearchJob:
    """``job`` with its devices and latency runtime resolved (``"auto"`` made concrete).

    Raises:
        SetupError: the latency runtime cannot run on the latency device.
    """
    from prunetune.evaluators import check_runtime, resolve_device, resolve_runtime

    job = replace(job, device=resolve_device(job.device),
                  latency_device=resolve_device(job.timing_device))
    job = replace(job, latency_runtime=resolve_runtime(job.latency_runtime, job.timing_device))
    try:
        check_runtime(job.latency_runtime, job.timing_device)
    except ValueError as e:
        raise SetupError(str(e)) from None
    return job


def _prepare(job: SearchJob, claim: _Claim, log: Log) -> _Prepared:
    """Check everything that can be checked, then write ``config.json`` (``claim.written``):
    the study's owner, the cluster, the data, the space, the budgets, the latency table and the
    base. Ray is started (attached first, when ``job.address`` names a cluster)."""
    import torch

    from prunetune.evaluators import (ImageData, atomic_write_text, configure_backends,
                                      load_data)
    from prunetune.search import StudyInUse, check_feasible, check_study_owner

    # A study of another run folder in the storage is refused before anything is read.
    run = _run_identity(job.out)
    try:
        check_study_owner(job.storage_url, job.study.study_name, run)
    except StudyInUse as e:
        raise SetupError(str(e)) from None
    torch.set_num_threads(job.cpus or os.cpu_count() or 1)
    configure_backends(job.device)
    log(f"device: {device_line(job)}")

    # A cluster is attached first: one that refuses us, or lacks what was asked for, is refused
    # in seconds, before any data is read or base trained. A local instance starts later.
    if job.address:
        start_ray(job, log)
    data = job.data if isinstance(job.data, ImageData) else load_data(
        job.data, image_size=job.image_size, val_fraction=job.val_fraction,
        seed=job.study.seed, per_class=job.per_class, test_per_class=job.test_per_class)
    for n in data.notes:
        log(n)
    log(data.describe())
    space = job_space(job, data)
    check_budgets_early(job, space)
    base, source, table = _base_and_table(job, space, data, log)
    full, small = base_costs(space, job.input_size, table)
    check_feasible(job.budgets, full, small)
    # The base stays on the CPU (its weights go to the trials); its copy on the device
    # evaluates, teaches and is measured there.
    base_dev = base if job.device == "cpu" else copy.deepcopy(base).to(job.device)
    limits = {b.metric: b.limit(full) for b in job.budgets}
    if not job.address:
        start_ray(job, log)

    # Everything is validated: only now is the run folder written.
    claim.written = True
    atomic_write_text(os.path.join(job.out, "config.json"), json.dumps(
        {**job.record, "run_id": run["id"], "storage": job.storage_url,
         "data": data.describe(), "base": source}, indent=1, default=str))
    return _Prepared(job, run, data, space, base, base_dev, source, table, full, limits)


def _base_and_table(job: SearchJob, space: Any, data: Any, log: Log) -> tuple[Any, str, Any]:
    """The base network (on the CPU), where its weights come from, and the latency table the
    study predicts with (``None`` unless ``job.latency == "predict"``)."""
    import torch

    from prunetune.evaluators import get_base_model

    def table_now() -> Any:
        return load_latency_table(space, job.input_size, path=job.latency_table,
                                  device=job.timing_device, threads=job.latency_threads,
                                  runtime=job.latency_runtime, log=log)

    # Cheap checks first: a --latency-table file that does not fit, then a checkpoint that
    # does not, are refused before a table is built or a base trained (a minute each).
    table = table_now() if job.latency == "predict" and job.latency_table else None
    if isinstance(job.model, torch.nn.Module):  # its weights are the base
        base = copy.deepcopy(job.model).cpu()
        source = f"the weights of the module given ({space.name})"
    else:
        base, source = get_base_model(space, data, weights=job.weights,
                                      checkpoint=job.checkpoint, epochs=job.base_epochs,
                                      seed=job.study.seed, device=job.device,
                                      precision=job.precision, log=log)
    if job.latency == "predict" and table is None:
        table = table_now()
    if table is not None:
        table = study_table(table, job.out, log)
    return base, source, table


def _measure_base(p: _Prepared, log: Log) -> None:
    """Score and time the dense base (``p.dense``), say the budgets, and keep the latency
    table in the run folder (``p.table_json``)."""
    from prunetune.evaluators import atomic_write_text, evaluate, measure_latency
    from prunetune.search import format_metric

    job, full, data = p.job, p.full, p.data
    base_val = evaluate(p.base_dev, data, data.val)
    base_lat = measure_latency(p.base_dev, job.input_size, device=job.timing_device,
                               threads=job.latency_threads, warmup=3, repeats=10,
                               runtime=job.latency_runtime)
    p.dense = {**full, "accuracy": base_val, "latency_ms": base_lat.median_ms}
    log(f"base: {p.source}; val acc {base_val:.2%}")
    log(f"base cost at {job.input_size}x{job.input_size}: {format_metric('flops', full['flops'])}, "
        f"{full['params'] / 1e6:.3f}M params, {base_lat.median_ms:.2f} ms")
    for b in job.budgets:
        lim = p.limits[b.metric]
        log(f"budget {b}: {format_metric(b.metric, lim)} ({lim / full[b.metric]:.1%} of the base)")
    if job.input_size != data.image_size:
        log(f"note: accuracy is scored at {data.image_size}x{data.image_size} (proxy); FLOPs and "
            f"latency are for the {job.input_size}x{job.input_size} deployment input")

    p.table_json = p.table.to_json() if p.table is not None else None
    if p.table_json is not None and not os.path.isfile(os.path.join(job.out, TABLE_FILE)):
        atomic_write_text(os.path.join(job.out, TABLE_FILE), p.table_json)


def _measure_sensitivity(p: _Prepared, log: Log) -> None:
    """The sensitivity of each channel group (``p.sensitivity_json``) when a ``sens:`` start
    point asks for it: the run folder's (a resumed run searches with the measurement it
    started with), else the cache's, else measured now and cached."""
    from prunetune.evaluators import atomic_write_text, cache_dir, get_sensitivity

    if not any(spec.startswith("sens:") for spec in p.job.study.priors):
        return
    path = os.path.join(p.job.out, SENSITIVITY_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            p.sensitivity_json = f.read()
        log(f"sensitivity: the run's own {path}")
        return
    sens = get_sensitivity(p.base_dev, p.space, p.data, folder=cache_dir(),
                           config=p.job.sensitivity, log=log)
    p.sensitivity_json = sens.to_json()
    atomic_write_text(path, p.sensitivity_json)


def _study_parts(p: _Prepared) -> tuple[Any, Any, StudySettings]:
    """The study's problem, the evaluator its trials score candidates with, and its settings."""
    from prunetune.evaluators import CandidateEvaluator
    from prunetune.search import Problem

    job, space, limits = p.job, p.space, p.limits
    problem = Problem(space=space.name, space_config=space.config(), limits=limits,
                      deploy_size=job.input_size, threads=job.threads,
                      latency_table=p.table_json, sensitivity=p.sensitivity_json)
    evaluator = CandidateEvaluator(
        space.name, space.config(), p.base.state_dict(), p.data,
        score=replace(job.score, seed=job.study.seed, precision=job.precision),
        deploy_size=job.input_size,
        threads=job.threads, latency=job.latency, latency_table=p.table_json,
        latency_threads=job.latency_threads,
        device="cuda" if job.study.gpus_per_trial > 0 else "cpu",
        latency_device=job.timing_device, latency_runtime=job.latency_runtime)
    settings = replace(job.study, prior_metric="latency" if "latency" in limits
                       else next(iter(limits)))
    return problem, evaluator, settings


def _explore(p: _Prepared, problem: Any, evaluator: Any, settings: StudySettings,
             storage: Any, log: Log) -> _Explored:
    """Run the study; write and show its Pareto front (``pareto.*``)."""
    from prunetune.search import (StudyInUse, emit, front, front_table, plot_front, run_study,
                                  trial_records, write_front)

    job, limits = p.job, p.limits
    log(f"search: {settings.trials} trials, {settings.workers} at once x {job.threads} "
        f"thread(s), {settings.sampler} sampler, objectives {','.join(settings.objectives)}")
    try:
        study = run_study(problem, settings, storage, evaluator, job.out, log=log, run=p.run)
    except StudyInUse as e:  # another run created it since the check above
        raise SetupError(str(e)) from None
    records = trial_records(study)
    if not records:
        raise RuntimeError("no trial completed; see failures.jsonl in the run folder")
    pareto = front(records, limits, settings.objectives)
    write_front(job.out, pareto)
    budget_flops = limits.get("flops") or (2 * limits["macs"] if "macs" in limits else None)
    plot_front(os.path.join(job.out, "pareto.png"), records, pareto,
               budget_flops=budget_flops, dense=p.dense,
               title=f"{job.model if isinstance(job.model, str) else p.space.name} "
                     f"x{job.space.get('width_mult', 1.0)}, budget "
                     f"{' & '.join(map(str, job.budgets))}")
    log(f"Pareto front ({len(pareto)} of {len(records)} trials; val accuracy"
        f"{'; latency predicted' if job.latency == 'predict' else ''}):")
    emit(log, front_table(pareto, p.dense))
    return _Explored(problem, evaluator, settings, study, records, pareto)


def _refine_and_pick(p: _Prepared, x: _Explored, log: Log) -> tuple[list[dict[str, Any]], Any]:
    """Check the table's predictions on the front, refine the best candidates, and (under a
    latency budget) pick by measured latency. Returns the records (those timed carry their
    measured latency) and the refinement's result."""
    from prunetune.evaluators import LatencyRatio
    from prunetune.search import run_refine

    job, table, limits, records = p.job, p.table, p.limits, x.records
    # A copied table of another machine: timing its candidates here says nothing of it,
    # so the check and the measured pick are for tables built here.
    to_dense = (LatencyRatio(p.base_dev, job.input_size, device=job.timing_device,
                             threads=job.latency_threads, runtime=job.latency_runtime)
                if table is not None and table.built_here(job.timing_device) else None)
    if to_dense is not None:
        check_latency(x.pareto, p.space, p.base_dev, to_dense, job, p.full["latency"], log)
    refined = run_refine(records, x.problem, job.refine, x.evaluator, job.out,
                         workers=x.settings.workers, gpus_per_trial=job.study.gpus_per_trial,
                         saved=x.study.user_attrs.get("refine"), log=log)
    x.study.set_user_attr("refine", refined)
    if "latency" in limits and job.final_top > 0:
        if to_dense is not None:
            records = measured_pick(records, limits, refined, p.space, p.base_dev, to_dense,
                                    job, p.full["latency"], table, log)
        else:
            log(f"latency pick: predicted by the table of {table.key['device_name']} "
                f"(--latency-table; not measured on this machine)")
    return records, refined


def _finalize(p: _Prepared, x: _Explored, records: list[dict[str, Any]], refined: Any,
              t_start: float, log: Log) -> dict[str, Any]:
    """Fine-tune (and export) the chosen candidates, compare with uniform width, and write
    ``summary.json``; returns the summary."""
    from prunetune.evaluators import atomic_write_text, evaluate
    from prunetune.search import final_candidates, run_finals, versus_uniform

    job, data = p.job, p.data
    ft = replace(job.finetune, seed=job.study.seed, precision=job.precision)
    chosen = final_candidates(records, p.limits, refined, job.final_top, job.final_baseline)
    finals = run_finals(chosen, p.space, p.base, data, ft, job.out,
                        importance=job.score.importance, bn_batches=job.score.bn_batches,
                        deploy_size=job.input_size, latency_threads=job.latency_threads,
                        do_export=job.export, device=job.device,
                        latency_device=job.timing_device,
                        latency_runtime=job.latency_runtime,
                        ray_resources=final_resources(job), log=log)
    verdict = versus_uniform(finals)
    if verdict:
        log(verdict["message"])
    base_test = evaluate(p.base_dev, data, data.test)
    summary = {"base": {**p.dense, "test_acc": base_test}, "final": finals,
               "pick": chosen[0]["trial"] if chosen else None, "versus_uniform": verdict,
               "trials_completed": len(records), "pareto_size": len(x.pareto),
               "records": records, "refine": refined, "front": x.pareto,
               "pick_record": chosen[0] if chosen else None,
               "wall_seconds": time.perf_counter() - t_start}
    atomic_write_text(os.path.join(job.out, "summary.json"), json.dumps(
        {k: v for k, v in summary.items() if k not in IN_MEMORY_ONLY}, indent=1))
    log(f"dense base test acc {base_test:.2%}; outputs in {job.out}/ "
        f"(pareto.csv, pareto.json, pareto.png, final/, summary.json); "
        f"wall time {time.perf_counter() - t_start:.0f} s")
    return summary


def _measured_ms(record: dict, space: Any, base: Any, to_dense: Any, dense_ms: float) -> float:
    """A record's network (pruned from ``base``) timed end to end in alternation with the dense
    network (``to_dense``, an :class:`evaluators.LatencyRatio` of it on the latency device), in
    the milliseconds of the dense network's time ``dense_ms`` that the budget was set against:
    measuring relative to the dense network at the same moment keeps the machine's drift over a
    run out of the comparison with the budget."""
    from prunetune.evaluators import prune_to_channels

    return dense_ms * to_dense(prune_to_channels(base, space, record["channels"], importance=None))


def check_latency(pareto: list, space: Any, base: Any, to_dense: Any, job: SearchJob,
                  dense_ms: float, log: Log = print) -> None:
    """Measure the front's candidates end to end (cores quiet now) against the table."""
    from prunetune.evaluators import atomic_write_text

    rows = []
    for r in pareto:
        meas = _measured_ms(r, space, base, to_dense, dense_ms)
        rows.append({"trial": r["trial"], "predicted_ms": r["latency_ms"], "measured_ms": meas,
                     "error": (r["latency_ms"] - meas) / meas})
    if not rows:
        return
    med = statistics.median(abs(x["error"]) for x in rows)
    atomic_write_text(os.path.join(job.out, "latency_check.json"),
                      json.dumps({"median_abs_error": med, "dense_ms": dense_ms, "rows": rows},
                                 indent=1))
    log(f"latency check: predicted vs measured on the {len(rows)} front candidates: median "
        f"|error| {med:.1%}, worst {max(abs(x['error']) for x in rows):.1%} "
        f"(latency_check.json)")


def measured_pick(records: list, limits: dict, refined: Any, space: Any, base: Any,
                  to_dense: Any, job: SearchJob, dense_ms: float, table: Any,
                  log: Log = print) -> list:
    """Under a latency budget the pick is measured, not predicted: candidates are timed end to
    end, relative to the dense network (:func:`_measured_ms`), in the refinement's order until
    ``job.final_top`` of them measure within the budget. One that measures over it is shrunk
    onto it once — the same allocation repaired onto the table's prediction × budget/measured,
    then timed again — and kept if it then measures within (its quick score is the unshrunk
    one's, which it may slightly miss). Each timed record carries its measured latency from
    then on, so those still over the budget drop out of the pick (``latency_pick.json`` lists
    every timing). The uniform-width baseline is timed, and shrunk, too (as one width
    multiplier); it stays the baseline whatever it measures.

    ``latency_pick.json`` also records what the pick depends on (the budgets, ``final_top``,
    the candidates in order with their channels, the table and how latency is timed) and what
    it picked: a resumed run with the same inputs takes that pick as it is, rather than timing
    again and perhaps landing elsewhere (the final fine-tunes already begun are of that pick);
    with other inputs it times again and says what changed."""
    from prunetune.evaluators import atomic_write_text
    from prunetune.search import at_budget, refine_order

    limit = limits["latency"]
    done: dict[int, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    order = refine_order(at_budget(records, limits, 0.0), refined)
    uniform = [r for r in records if r["baseline"] == "uniform"]
    path = os.path.join(job.out, "latency_pick.json")
    inputs = _pick_inputs(order + uniform, job, table)
    picked = _earlier_pick(path, inputs, log)
    if picked is not None:
        return [picked.get(r["trial"], r) for r in records]
    for r in order + uniform:
        if r["trial"] in done or (sum(x["within"] for x in rows) >= job.final_top
                                  and r["baseline"] != "uniform"):
            continue
        row, done[r["trial"]] = _time_candidate(r, limit, space, base, to_dense, job,
                                                dense_ms, table)
        rows.append(row)
    atomic_write_text(path, json.dumps(
        {"limit_ms": limit, "dense_ms": dense_ms, "rows": rows, "inputs": inputs,
         "picked": {str(t): r for t, r in done.items()}}, indent=1, default=str))
    over = [str(x["trial"]) for x in rows if not x["within"]]
    shrunk = [str(x["trial"]) for x in rows if x.get("shrunk", {}).get("within")]
    log(f"measured pick: timed {len(rows)} candidate(s) end to end against {limit:.2f} ms"
        + (f"; trial(s) {', '.join(shrunk)} shrunk onto it" if shrunk else "")
        + (f"; trial(s) {', '.join(over)} measured over it" if over else "; all within it")
        + " (latency_pick.json)")
    return [done.get(r["trial"], r) for r in records]


def _pick_inputs(candidates: list[dict[str, Any]], job: SearchJob, table: Any
                 ) -> dict[str, Any]:
    """What the measured pick depends on, as JSON reads it back (compared on resume)."""
    return json.loads(json.dumps({
        "budgets": [str(b) for b in job.budgets], "final_top": job.final_top,
        "candidates": [{k: r[k] for k in ("trial", "baseline", "channels")}
                       for r in candidates],
        "table": table.key, "input_size": job.input_size, "threads": job.latency_threads,
        "runtime": job.latency_runtime, "device": job.timing_device},
        default=str))


def _earlier_pick(path: str, inputs: dict[str, Any], log: Log
                  ) -> dict[int, dict[str, Any]] | None:
    """The pick an earlier run of this folder made (``latency_pick.json``) for the same
    ``inputs``, by trial number; ``None`` (and why, when there was one) if it must be timed."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and saved.get("inputs") == inputs and "picked" in saved:
        log(f"measured pick: as timed by an earlier run of this folder, for the same "
            f"candidates and budget ({len(saved.get('rows', []))} timed; latency_pick.json)")
        return {int(k): v for k, v in saved["picked"].items()}
    if isinstance(saved, dict):
        old = saved.get("inputs") or {}
        what = [k for k in sorted(inputs) if old.get(k) != inputs[k]]
        log(f"measured pick: {', '.join(what) if old else 'the inputs (not recorded)'} "
            f"changed since latency_pick.json; timing the candidates again")
    return None


def _time_candidate(r: dict[str, Any], limit: float, space: Any, base: Any, to_dense: Any,
                    job: SearchJob, dense_ms: float, table: Any
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Time record ``r`` (and, over ``limit``, shrink it onto it once and time it again):
    its row of ``latency_pick.json`` and the record the pick goes on with."""
    from prunetune.search import candidate_values, repair

    ms = _measured_ms(r, space, base, to_dense, dense_ms)
    row = {"trial": r["trial"], "baseline": r["baseline"], "predicted_ms": r["latency_ms"],
           "measured_ms": ms, "within": ms <= limit}
    kept = dict(r, latency_ms=ms)
    if ms > limit:
        # Onto the table's prediction x budget / measured, but not below the smallest
        # network the space allows (repair refuses a budget nothing meets).
        floor = table.predict(space, space.uniform(space.low))
        pol, _ = repair(space, r["policy"],
                        {"latency": max(r["latency_ms"] * limit / ms, floor)},
                        job.input_size, table=table, fill=r["baseline"] != "uniform")
        vals = candidate_values(space, pol, job.input_size, table)
        small = dict(r, policy=pol, channels=space.channels(pol), flops=vals["flops"],
                     macs=vals["macs"], params=vals["params"], latency_ms=vals["latency"])
        small_ms = _measured_ms(small, space, base, to_dense, dense_ms)
        row["shrunk"] = {"predicted_ms": vals["latency"], "measured_ms": small_ms,
                         "flops": vals["flops"], "within": small_ms <= limit}
        if small_ms <= limit:
            row["within"] = True
            kept = dict(small, latency_ms=small_ms, shrunk=True)
    return row, kept


def start_dashboard(storage_url: str, port: int, log: Log = print) -> subprocess.Popen:
    exe = shutil.which("optuna-dashboard") or os.path.join(os.path.dirname(sys.executable),
                                                           "optuna-dashboard")
    proc = subprocess.Popen([exe, storage_url, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"dashboard: http://127.0.0.1:{port}/ (pid {proc.pid})")
    return proc

