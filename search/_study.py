"""The study: Ray Tune runs the trials, Ray's OptunaSearch proposes them, Optuna stores them.

Every proposal is repaired onto the budget with the analytic cost model *before* a trial
starts (the ratios are scaled down together until the candidate fits), so no trial trains a
network over budget. The study lives in an Optuna storage; a re-run on the same storage
continues it: completed trials are kept, orphaned RUNNING trials are closed as FAIL, and only
the missing number of trials is run.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optuna
from optuna.trial import TrialState

from prunetune.evaluators import Eta, LatencyTable, Sensitivity, check_at_least
from prunetune._registry import Registry
from prunetune.spaces import Policy, SearchSpace, get_space

from ._local import LocalSampler
from ._objectives import OBJECTIVES
from ._priors import DEFAULT_PRIORS, FAMILIES, cost_aware, depth_ramp, marginal_costs
from ._structured import StructuredAllocation

# Sampler factories by the name users pass: (seed, trials) -> sampler. `group=True` lets
# multivariate TPE model the conditional `cost_target` of exploring trials.
SAMPLERS: Registry[Callable[[int, int], optuna.samplers.BaseSampler]] = Registry("sampler", {
    "tpe": lambda seed, trials: optuna.samplers.TPESampler(
        multivariate=True, group=True, constant_liar=True, seed=seed,
        n_startup_trials=min(10, max(2, trials // 4))),
    "nsga2": lambda seed, trials: optuna.samplers.NSGAIISampler(
        seed=seed, population_size=max(4, min(20, trials // 3))),
    "random": lambda seed, trials: optuna.samplers.RandomSampler(seed=seed),
    "local": lambda seed, trials: LocalSampler(seed=seed),
})


@dataclass(frozen=True)
class Problem:
    """What the search needs to propose candidates: the space, the budget and how to cost.

    Attributes:
        limits: metric -> absolute limit (flops / macs / params / latency in predicted ms).
        deploy_size: Input size for costs.
        threads: CPUs each trial reserves in Ray.
        latency_table: A LatencyTable's JSON, for latency budgets and latency priors.
        sensitivity: A Sensitivity's JSON (``evaluators.get_sensitivity``), for the ``sens:``
            start points and the structured space's ``toward_sensitivity``.
    """

    space: str
    space_config: dict
    limits: dict
    deploy_size: int = 224
    threads: int = 1
    latency_table: str | None = None
    sensitivity: str | None = None

    def table(self) -> LatencyTable | None:
        return LatencyTable.from_json(self.latency_table) if self.latency_table else None

    def sensitivity_measurement(self) -> Sensitivity | None:
        return Sensitivity.from_json(self.sensitivity) if self.sensitivity else None


# What a sampled trial proposes (StudySettings.allocation), with what it is.
ALLOCATIONS: Registry[str] = Registry("allocation", {
    "structured": "a few coordinates generate the allocation (search._structured)",
    "per-group": "one keep-ratio per channel group",
})

# The seeds a sampler takes (numpy's seed range).
SEED_MAX = 2 ** 32 - 1


@dataclass(frozen=True)
class StudySettings:
    """How the study runs. The checks of the command line's search options live here (its
    messages name those options, e.g. ``--trials``)."""

    trials: int
    workers: int = 2
    sampler: str = "tpe"
    objectives: tuple[str, ...] = ("accuracy", "flops", "latency")
    seed: int = 0
    max_failures: int = 1
    study_name: str = "prunetune"
    gpus_per_trial: float = 0.0
    round_to_choices: tuple[int, ...] = ()
    # One sampled trial in ``front_every`` explores the cost axis for the Pareto front; the
    # rest land at the budget (0: all at the budget).
    front_every: int = 4
    # Named start allocations enqueued after the uniform baseline (search._priors.FAMILIES:
    # "cost:A" cost-aware, "ramp:B" depth ramp); () for uniform width alone.
    priors: tuple[str, ...] = DEFAULT_PRIORS
    prior_metric: str = "flops"
    # What a sampled trial proposes: "structured" (a few coordinates that generate the
    # allocation, search._structured) or "per-group" (one keep-ratio per channel group).
    allocation: str = "structured"

    def __post_init__(self) -> None:
        check_at_least(1, trials=self.trials, workers=self.workers)
        if not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"--seed must be in 0..{SEED_MAX} (numpy's seed range), but got "
                             f"{self.seed}.")
        check_at_least(0, max_failures=self.max_failures, front_every=self.front_every)
        if self.front_every == 1:
            raise ValueError("--front-every 1 sends every sampled trial below the budget, so "
                             "none lands at it where the pick is made; give 0 (all at the "
                             "budget) or >= 2.")
        g = self.gpus_per_trial
        if g < 0:
            raise ValueError(f"--gpus-per-trial must be >= 0, but got {g}.")
        if (g > 1 and g != int(g)) or 0 < g < 1e-4:
            raise ValueError(f"--gpus-per-trial {g:g} is not a share Ray can give: a fraction "
                             f"of one GPU (0.0001 to 1) or a whole number of GPUs; give e.g. "
                             f"0.5 or 2.")
        self._check_lists()

    def _check_lists(self) -> None:
        """--objectives, --round-to-choices and --priors (each item once)."""
        objs = self.objectives
        if (not objs or objs[0] != "accuracy" or len(set(objs)) != len(objs)
                or any(o not in OBJECTIVES for o in objs)):
            raise ValueError(f"--objectives {','.join(objs)!r} is invalid; give a comma list "
                             f"from {list(OBJECTIVES)} starting with accuracy, e.g. "
                             f"accuracy,flops.")
        text = ",".join(map(str, self.round_to_choices))
        if self.round_to_choices and min(self.round_to_choices) < 1:
            raise ValueError(f"--round-to-choices {text!r} must be a comma list of numbers "
                             f">= 1, e.g. 8,16,32.")
        if len(set(self.round_to_choices)) != len(self.round_to_choices):
            raise ValueError(f"--round-to-choices {text!r} repeats a multiple; give each once, "
                             f"e.g. 8,16,32.")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"--allocation {self.allocation!r} is not one of "
                             f"{list(ALLOCATIONS)}; give e.g. --allocation structured.")
        if self.allocation == "structured":
            ramps = [p for p in self.priors if p.startswith("ramp:")]
            if ramps:
                raise ValueError(f"--priors {','.join(ramps)}: a depth ramp is no point of the "
                                 f"structured space; drop it, or give --allocation per-group.")
            if self.sampler == "local":
                raise ValueError("--sampler local perturbs per-group keep-ratios; give it with "
                                 "--allocation per-group, or another --sampler.")
        if len(set(self.priors)) != len(self.priors):
            raise ValueError(f"--priors {','.join(self.priors)!r} repeats a prior (the same "
                             f"start point twice); give each once.")


def make_space(problem: Problem) -> SearchSpace:
    return get_space(problem.space, **problem.space_config)


def start_points(space: SearchSpace, problem: Problem, settings: StudySettings,
                 table: LatencyTable | None = None) -> list[tuple[str, Policy]]:
    """The raw allocations enqueued before the sampler takes over, each landing at the budget.

    Trial 0 is the uniform-width baseline (every raw ratio at ``high``: the repair scales it
    to the largest uniform width within the budget); then one allocation per entry of
    ``settings.priors`` (see :func:`search.parse_priors`), rounded onto the sampler's grid.
    """
    out: list[tuple[str, Policy]] = [("uniform", space.uniform(space.high))]
    grid = space.ratio_choices()
    costs = None
    for spec in settings.priors:
        family, value = spec.split(":")
        if family == "cost":
            costs = costs or marginal_costs(space, settings.prior_metric, problem.deploy_size,
                                            table)
            raw = cost_aware(space, costs, float(value))
        elif family == "sens":
            raw = _toward_sensitivity(space, problem, float(value), settings.prior_metric,
                                      table)
        else:
            raw = depth_ramp(space, float(value))
        out.append((prior_tag(spec),
                    {k: min(grid, key=lambda g: abs(g - v)) for k, v in raw.items()}))
    return out


def prior_tag(spec: str) -> str:
    """The ``baseline`` tag of start point ``spec`` (``"cost:-0.5"`` -> ``"cost-aware
    a=-0.5"``)."""
    family, value = spec.split(":")
    return f"{FAMILIES[family]}={float(value):g}"


def _toward_sensitivity(space: SearchSpace, problem: Problem, t: float, metric: str,
                        table: LatencyTable | None) -> Policy:
    """``t`` of the way (in log-ratios) from uniform width to the sensitivity allocation: the
    structured space's point ``sens:t``."""
    sens = problem.sensitivity_measurement()
    if sens is None:
        raise ValueError("a sens: start point needs a sensitivity measurement "
                         "(Problem.sensitivity); measure one, or drop the sens: prior.")
    gen = StructuredAllocation(space, problem.limits, problem.deploy_size, metric, table, sens)
    return gen.allocation(gen.point(f"sens:{t}"))


# -- the trial (runs in a Ray worker) ------------------------------------------------------------
def run_trial(config: dict, *, evaluate: Callable[[Mapping[str, Any]], dict]) -> None:
    """The Ray Tune trainable: evaluate one candidate and report what the evaluation says.

    ``evaluate`` is injected (see ``evaluators.CandidateEvaluator`` for the contract); its
    ``attrs`` travel as JSON and become the Optuna trial's user attributes.
    """
    from ray import tune

    out = dict(evaluate(config))
    attrs = dict(out.pop("attrs", {}))
    try:
        import ray

        attrs["ray_node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (direct calls) there is no node id
        attrs["ray_node_id"] = None
    tune.report({**out, "attrs_json": json.dumps(attrs)})


# -- the driver ----------------------------------------------------------------------------------
def open_storage(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """An Optuna storage; SQLite files are switched to WAL so a reading dashboard never blocks
    the search's writes (optuna-dashboard #545).

    A SQLite file is opened again (``attempts`` times, 0.5 s apart) when another process
    (optuna-dashboard started with the run, a test reading the study) creates the same new
    schema at the same instant: the run's side then failed on a table that now existed, the
    schema's version row or the lock the other held (14 of 15 such pairs of threads failed),
    and the schema the other made is the one to open. Other errors, and other databases, are
    not retried.
    """
    if not url.startswith("sqlite:///"):
        return optuna.storages.RDBStorage(url, heartbeat_interval=None)
    import sqlalchemy.exc

    for _ in range(attempts - 1):
        try:
            return _open_sqlite(url)
        except (sqlite3.OperationalError, sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.IntegrityError) as e:
            if not any(s in str(e) for s in ("already exists", "locked", "UNIQUE constraint")):
                raise
            time.sleep(0.5)
    return _open_sqlite(url)


def _open_sqlite(url: str) -> optuna.storages.RDBStorage:
    path = url[len("sqlite:///"):]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA journal_mode=WAL")
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


class StudyInUse(ValueError):
    """The study in the storage belongs to another run (another run folder); the message says
    which, and the fix."""


def _owner_error(name: str, owner: Mapping[str, Any]) -> StudyInUse:
    return StudyInUse(f"study {name!r} in this --storage belongs to another run (--out "
                      f"{owner.get('out')!r}); give this run another --study-name, or resume "
                      f"that run with --out {owner.get('out')!r}.")


def check_study_owner(url: str, name: str, run: Mapping[str, str]) -> None:
    """Refuse, without writing anything, a study ``name`` in the storage ``url`` that records
    another run than ``run`` (``{"id", "out"}``; see :func:`open_study`). A storage that does
    not exist yet, or holds no such study, passes.

    Raises:
        StudyInUse: the study is another run's.
    """
    import sqlalchemy

    if url.startswith("sqlite:///") and not os.path.isfile(url[len("sqlite:///"):]):
        return
    engine = sqlalchemy.create_engine(url)
    try:
        if not sqlalchemy.inspect(engine).has_table("studies"):  # no Optuna schema: no study
            return
    finally:
        engine.dispose()
    storage = optuna.storages.RDBStorage(url)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return
    owner = storage.get_study_user_attrs(study_id).get("run")
    if owner is not None and owner.get("id") != run["id"]:
        raise _owner_error(name, owner)


def open_study(storage: optuna.storages.BaseStorage, settings: StudySettings,
               run: Mapping[str, str] | None = None) -> optuna.Study:
    """Create ``settings.study_name`` in ``storage``, or load it (a resumed run).

    With ``run`` (``{"id": ..., "out": run folder}``, the identity a run folder keeps in its
    ``config.json``) the study belongs to that run: a new study records it as its user
    attribute ``run``, and a study recording another run is refused, so that two run folders
    given one ``--storage`` never mix their trials. A study made before runs were recorded is
    adopted. Creating the study is the claim: of two runs creating it at once, one loads it
    and sees the other's identity.

    Raises:
        StudyInUse: the study is another run's.
    """
    directions = [OBJECTIVES[o].direction for o in settings.objectives]
    name = settings.study_name
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions)
        if run is not None:
            study.set_user_attr("run", dict(run))
        return study
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                    load_if_exists=True)
    if run is None:
        return study
    owner = study.user_attrs.get("run")
    if owner is None and not study.trials:
        time.sleep(1.0)  # created by another run this instant: its identity follows at once
        owner = optuna.load_study(study_name=name, storage=storage).user_attrs.get("run")
    if owner is None:
        study.set_user_attr("run", dict(run))
    elif owner.get("id") != run["id"]:
        raise _owner_error(name, owner)
    return study


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` seeded with ``seed`` modulo 2**32 (numpy's range: a resumed study
    seeds with its seed plus the trials so far, which may pass it)."""
    return SAMPLERS.lookup(name)(seed % 2 ** 32, trials)


def close_orphans(study: optuna.Study, why: str = "the driver stopped while it ran") -> int:
    """Mark RUNNING trials (nothing runs them any more) as FAIL, recording ``why`` as an
    ``orphaned: …`` failure (:func:`enqueue_start_points` runs such start points again);
    returns how many."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.set_user_attr(f"failure:{t.number}", f"orphaned: {why}")
        n += 1
    return n


def enqueue_start_points(study: optuna.Study, points: list[tuple[str, dict[str, Any]]],
                         trials: int) -> int:
    """Enqueue the start points ``(tag, params)`` a new study begins with, or, in a resumed
    study, those its stopped driver never finished; returns how many were enqueued.

    A resumed study enqueues again a start point whose every trial (tagged with it by the user
    attribute ``baseline``) was orphaned, i.e. its driver stopped while it ran
    (:func:`close_orphans`): so each start point is evaluated, once. A start point that
    completed, waits, runs or failed on its own is not enqueued again, nor one the study
    never held (the user changed the priors). No more are enqueued than the trials still
    missing (a start point beyond them would stay WAITING in the study).
    """
    room = (trials - len(completed(study))
            - len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
    if not study.trials:
        todo = points[:room]
    else:
        orphaned = {int(k.split(":", 1)[1]) for k, v in study.user_attrs.items()
                    if k.startswith("failure:") and str(v).startswith("orphaned")}
        tagged = [(t.user_attrs["baseline"], t.state == TrialState.FAIL and t.number in orphaned)
                  for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")]
        held = {tag for tag, lost in tagged if not lost}
        lost = {tag for tag, was_lost in tagged if was_lost} - held
        todo = [(tag, p) for tag, p in points if tag in lost][:max(0, room)]
    for tag, params in todo:
        study.enqueue_trial(dict(params), user_attrs={"baseline": tag})
    return len(todo)


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


@dataclass
class _Progress:
    total: int
    done: int
    log: Callable[[str], None]
    best: float = -1.0

    def __post_init__(self) -> None:
        self.eta = Eta(self.total, self.done)


def _progress_callback(state: _Progress, failures_path: str,
                       number: Callable[[str], int | None] = lambda trial_id: None):
    """Ray Tune's callback: a progress line per completed trial, and a line in
    ``failures_path`` per failed one, with its Optuna trial number (``number`` maps Ray's
    trial id to it: :meth:`PrunetuneSearch.optuna_number`) and Ray's id beside it."""
    from ray import tune

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            r = trial.last_result or {}
            if "accuracy" not in r:
                return
            state.done += 1
            state.best = max(state.best, r["accuracy"])
            lat = r.get("latency_ms", float("nan"))
            ms = "" if lat != lat else f"{lat:.2f} ms "  # NaN: latency off
            state.log(f"[{state.done}/{state.total}] acc {r['accuracy']:.2%}  "
                      f"{r['flops'] / 1e6:.1f}M FLOPs ({r['macs'] / 1e6:.1f}M MACs)  "
                      f"{ms}| best under budget {state.best:.2%} | {state.eta.step()}")

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            reason = _error_text(trial)
            n = number(trial.trial_id)
            state.log(f"  trial {trial.trial_id if n is None else n} failed: {reason}")
            with open(failures_path, "a") as f:
                f.write(json.dumps({"trial": n, "ray_trial": trial.trial_id, "reason": reason,
                                    "time": time.time()}) + "\n")

    return Progress()


def _error_text(trial: Any) -> str:
    msg = getattr(trial, "error_msg", None) or ""
    path = getattr(trial, "error_file", None)
    if not msg and path and os.path.exists(path):
        msg = open(path).read()
    lines = [line for line in str(msg).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def run_study(problem: Problem, settings: StudySettings, storage: optuna.storages.BaseStorage,
              evaluate: Callable[[Mapping[str, Any]], dict], run_dir: str,
              log: Callable[[str], None] = print,
              run: Mapping[str, str] | None = None) -> optuna.Study:
    """Run (or continue) the study until it holds ``settings.trials`` completed trials.

    Args:
        evaluate: The evaluation of one candidate, injected (``evaluators.CandidateEvaluator``
            or a fake with its contract); it must be picklable (Ray ships it to the workers).
        run: The run's identity (``{"id", "out"}``): the study must be this run's
            (:func:`open_study`).

    Raises:
        StudyInUse: the study belongs to another run.
    """
    from ray import tune

    space = make_space(problem)
    _quiet()
    study = open_study(storage, settings, run)
    study.set_metric_names([OBJECTIVES[o].key for o in settings.objectives])
    orphans = close_orphans(study)
    if orphans:
        log(f"resume: closed {orphans} trial(s) left RUNNING by a stopped driver as FAIL")
    define, points = _define_and_points(problem, settings, space, log)
    resumed = bool(study.trials)
    added = enqueue_start_points(study, points, settings.trials)
    if resumed and added:
        log(f"resume: {added} start point(s) the stopped driver never finished enqueued again")
    if resumed and completed(study):
        log(f"resume: the study holds {len(completed(study))} completed trial(s); continuing")

    progress = _Progress(settings.trials, len(completed(study)), log)
    for acc in (t.values[0] for t in completed(study)):
        progress.best = max(progress.best, acc)
    trainable = tune.with_parameters(run_trial, evaluate=evaluate)
    rounds = 0
    while len(completed(study)) < settings.trials and rounds < 3:
        rounds += 1
        if rounds > 1:  # a start point left RUNNING by the last round runs again, once
            enqueue_start_points(study, points, settings.trials)
        _tune_round(trainable, define, problem, settings, storage, study, rounds, run_dir,
                    progress)
        close_orphans(study, "its round ended without a result from it")
    if len(completed(study)) < settings.trials:
        log(f"warning: {len(completed(study))} of {settings.trials} trials completed after "
            f"{rounds} rounds; the rest failed (see failures.jsonl)")
    return study


def _quiet() -> None:
    """Silence what Optuna and Ray Tune say of every trial (the progress line says it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Repairing a proposal onto the budget takes ~0.1-1 s by design (bisection on the cost
    # model); Ray warns about define-by-run functions slower than that.
    warnings.filterwarnings("ignore", message="Define-by-run function passed")


def _define_and_points(problem: Problem, settings: StudySettings, space: SearchSpace,
                       log: Callable[[str], None]
                       ) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """The study's define-by-run space (:class:`DefineByRun`) and its start points, each with
    a rounding multiple the space searches."""
    from ._searcher import DefineByRun

    table = problem.table()
    uses_table = "latency" in problem.limits or settings.prior_metric == "latency"
    define = DefineByRun(space.name, space.config(), problem.limits, problem.deploy_size,
                         table_json=problem.latency_table if uses_table else None,
                         round_to_choices=settings.round_to_choices,
                         front_every=settings.front_every, allocation=settings.allocation,
                         prior_metric=settings.prior_metric,
                         sensitivity_json=problem.sensitivity)
    choices = define.round_to_choices
    dropped = sorted(set(settings.round_to_choices) - set(choices))
    if dropped:
        log(f"--round-to-choices: {dropped} not searched, their smallest networks are over "
            f"the budget; searching {list(choices)}")
    round_to = space.round_to if not choices or space.round_to in choices else choices[0]
    if settings.allocation == "structured":
        gen = define.structured(round_to)
        todo: list[tuple[str, dict[str, Any]]] = [("uniform", gen.point("uniform"))]
        todo += [(prior_tag(spec), gen.point(spec)) for spec in settings.priors]
    else:
        todo = [(tag, dict(raw)) for tag, raw in start_points(space, problem, settings, table)]
    points = []
    for tag, fixed in todo:
        if choices:
            fixed["round_to"] = round_to
        points.append((tag, fixed))
    return define, points


def _tune_round(trainable: Any, define: Any, problem: Problem, settings: StudySettings,
                storage: optuna.storages.BaseStorage, study: optuna.Study, rounds: int,
                run_dir: str, progress: _Progress) -> None:
    """One Ray Tune run of the trials the study still lacks (round ``rounds``)."""
    from ray import tune

    from ._searcher import PrunetuneSearch

    metrics = [OBJECTIVES[o].key for o in settings.objectives]
    modes = ["max" if OBJECTIVES[o].maximize else "min" for o in settings.objectives]
    resources = {"cpu": problem.threads, "gpu": settings.gpus_per_trial}
    remaining = settings.trials - len(completed(study))
    searcher = PrunetuneSearch(
        space=define, metric=metrics, mode=modes, storage=storage,
        study_name=settings.study_name,
        sampler=make_sampler(settings.sampler, settings.seed + len(study.trials),
                             settings.trials))
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                    max_concurrent_trials=settings.workers,
                                    reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{rounds}",
            storage_path=os.path.abspath(os.path.join(run_dir, "ray")),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            verbose=0, callbacks=[_progress_callback(
                progress, os.path.join(run_dir, "failures.jsonl"), searcher.optuna_number)]),
    )
    tuner.fit()
