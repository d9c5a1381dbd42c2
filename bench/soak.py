"""Soak: a long study driven as prunetune drives it, with faults injected, then checked.

``search.run_study`` (Ray Tune + OptunaSearch on an Optuna storage, 2 workers) runs a study of
``trials`` trials whose evaluation is a fast stand-in (an analytic score of the candidate's
channels and its analytic FLOPs, ~0.05 s a trial, deterministic). The driver runs as a
subprocess; while it runs, a trial worker is SIGKILLed every ``kill_every`` completed trials
(mid-evaluation where one can be caught) and the driver itself is SIGKILLed once, with a trial
running, then started again with the same command, which resumes the same study. At the end the storage is checked:

- every trial asked for COMPLETE, none RUNNING or WAITING;
- lost = 0: every trial seen COMPLETE during the run is still COMPLETE with the same values,
  every start point (uniform width, priors) completed;
- duplicated = 0: no start point completed twice, no evaluation recorded in two trials;
- the front (``search.front`` over ``search.trial_records``) equals one recomputed here from the
  values Optuna stored, and Optuna's own front within the budget.

    python bench/run.py soak            # SQLite and PostgreSQL, 300 trials each (~2-3 min each)
    python bench/soak.py drive ...      # the driver (started by the soak, not by hand)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE_NAME = "mobilenet_v2"
SPACE_CONFIG: dict[str, Any] = {"width_mult": 0.25, "num_classes": 10}
SIZE = 32
BUDGET = 0.5  # of the dense network's FLOPs
STUDY = "soak"
OBJECTIVES = ("accuracy", "flops")


# -- the stand-in evaluation (runs in the Ray workers) ------------------------------------------
class StandInEvaluate:
    """The evaluation contract of ``evaluators.CandidateEvaluator`` at ~``seconds`` a trial.

    Accuracy is a smooth function of the kept fraction of each group (late groups weigh more),
    the costs are the analytic ones: deterministic in the channels. While it evaluates, the
    file ``run_dir/busy/PID`` exists, so the soak can kill a worker mid-evaluation; each call's
    ``eval_id`` goes into the trial's user attributes, so one evaluation recorded in two trials
    shows.
    """

    def __init__(self, run_dir: str, seconds: float = 0.05) -> None:
        self.run_dir, self.seconds = run_dir, seconds
        self._space: Any = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_space": None}

    def __call__(self, config: Mapping[str, Any]) -> dict:
        from prunetune.evaluators import channels_cost
        from prunetune.spaces import get_space

        t0 = time.perf_counter()
        busy = os.path.join(self.run_dir, "busy", str(os.getpid()))
        os.makedirs(os.path.dirname(busy), exist_ok=True)
        with open(busy, "w") as f:
            f.write(json.dumps(config.get("policy", {}), sort_keys=True))
        try:
            if self._space is None:
                self._space = get_space(SPACE_NAME, **SPACE_CONFIG)
            ch, full = config["channels"], self._space.full_channels()
            names = self._space.group_names
            acc = sum((i + 1) * math.sqrt(ch[g] / full[g]) for i, g in enumerate(names))
            acc /= sum(i + 1 for i in range(len(names)))
            cost = channels_cost(self._space, ch, SIZE)
            time.sleep(max(0.0, self.seconds - (time.perf_counter() - t0)))
        finally:
            with contextlib.suppress(OSError):
                os.remove(busy)
        attrs = {k: v for k, v in config.items() if k != "score"}
        attrs.update(cost.as_dict(), eval_id=uuid.uuid4().hex, pid=os.getpid())
        return {"accuracy": acc, "score": acc, **cost.as_dict(), "latency_ms": float("nan"),
                "attrs": attrs}


def problem_and_settings(trials: int) -> tuple[Any, Any]:
    from prunetune.evaluators import policy_cost
    from prunetune.search import Problem, StudySettings
    from prunetune.spaces import get_space

    space = get_space(SPACE_NAME, **SPACE_CONFIG)
    limit = BUDGET * policy_cost(space, space.uniform(1.0), SIZE).flops
    problem = Problem(space.name, space.config(), {"flops": limit}, deploy_size=SIZE, threads=1)
    # The cost-aware start points alone: the soak's stand-in evaluation has no sensitivity pass.
    settings = StudySettings(trials=trials, workers=2, objectives=OBJECTIVES, study_name=STUDY,
                             priors=("cost:-0.25", "cost:-0.5", "cost:-1"))
    return problem, settings


def start_tags(trials: int) -> list[str]:
    """The ``baseline`` tags of the start points the study enqueues (uniform width, priors)."""
    from prunetune.search import start_points
    from prunetune.spaces import get_space

    problem, settings = problem_and_settings(trials)
    space = get_space(SPACE_NAME, **SPACE_CONFIG)
    return [tag for tag, _ in start_points(space, problem, settings)][:trials]


def drive(storage_url: str, trials: int, run_dir: str, seconds: float) -> int:
    """The driver: ``run_study`` as the pipeline calls it, on a local Ray with 2 CPUs."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from prunetune.search import init_ray, open_storage, run_study

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} driver {os.getpid()}: {msg}", flush=True)

    problem, settings = problem_and_settings(trials)
    log(init_ray(None, 2, log=log))
    study = run_study(problem, settings, open_storage(storage_url),
                      StandInEvaluate(run_dir, seconds), run_dir, log=log,
                      run={"id": "soak", "out": run_dir})
    log(f"done: {len(study.trials)} trials in the study")
    return 0


# -- the checks (pure: rows in, numbers out) -----------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One trial as the storage holds it."""

    number: int
    state: str  # COMPLETE / FAIL / RUNNING / WAITING / PRUNED
    values: tuple[float, ...] | None = None
    baseline: str = ""
    eval_id: str | None = None
    flops: float | None = None
    orphaned: bool = False  # closed as FAIL on resume: its driver was killed while it ran
    completed_at: float | None = None  # POSIX time


def rows_of(storage_url: str) -> list[Row]:
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=storage_url)
    orphans = {k for k, v in study.user_attrs.items() if str(v).startswith("orphaned")}
    return [Row(t.number, t.state.name, tuple(t.values) if t.values else None,
                t.user_attrs.get("baseline", ""), t.user_attrs.get("eval_id"),
                t.user_attrs.get("flops"), f"failure:{t.number}" in orphans,
                t.datetime_complete.timestamp() if t.datetime_complete else None)
            for t in study.get_trials(deepcopy=False)]


def check_trials(rows: Sequence[Row], trials: int, tags: Sequence[str],
                 seen: Mapping[int, tuple[float, ...]]) -> dict[str, Any]:
    """What the storage says against what the run asked for.

    Args:
        trials: How many completed trials the study was asked for.
        tags: The start points' ``baseline`` tags; each must complete exactly once.
        seen: Trial number -> values of every trial seen COMPLETE while the study ran.

    Returns:
        Counts by state, ``lost`` (seen-complete trials no longer complete or changed, start
        points never completed, completed trials short of ``trials``), ``duplicated`` (a
        start point completed more than once, an evaluation in more than one trial, a trial
        number twice) and ``ok``.
    """
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    done = [r for r in rows if r.state == "COMPLETE"]
    by_number = {r.number: r for r in done}
    changed = sorted(n for n, v in seen.items()
                     if n not in by_number or tuple(by_number[n].values or ()) != tuple(v))
    per_tag = {t: sum(r.baseline == t for r in done) for t in tags}
    start_lost = sorted(t for t, k in per_tag.items() if k == 0)
    start_dup = sorted(t for t, k in per_tag.items() if k > 1)
    ids = [r.eval_id for r in done if r.eval_id is not None]
    numbers = [r.number for r in rows]
    dup_evals = len(ids) - len(set(ids))
    dup_numbers = len(numbers) - len(set(numbers))
    lost = len(changed) + len(start_lost) + max(0, trials - len(done))
    duplicated = sum(per_tag[t] - 1 for t in start_dup) + dup_evals + dup_numbers \
        + max(0, len(done) - trials)
    out = {"states": states, "complete": len(done), "asked": trials,
           "running": states.get("RUNNING", 0), "waiting": states.get("WAITING", 0),
           "failed_orphaned_by_driver_kill": sum(r.state == "FAIL" and r.orphaned for r in rows),
           "failed_other": sum(r.state == "FAIL" and not r.orphaned for r in rows),
           "lost": lost, "duplicated": duplicated,
           "changed_after_seen": changed, "start_points_lost": start_lost,
           "start_points_duplicated": start_dup, "evaluations_in_two_trials": dup_evals,
           "evals_missing_id": len(done) - len(ids)}
    out["ok"] = (lost == 0 and duplicated == 0 and len(done) == trials
                 and out["running"] == 0 and out["waiting"] == 0)
    return out


def rate_by_window(rows: Sequence[Row], window: int = 50) -> list[float]:
    """Trials a minute over each run of ``window`` completions, in completion order (how the
    rate changes as the study grows; the window holding a kill pays for its restart)."""
    ts = sorted(r.completed_at for r in rows if r.state == "COMPLETE" and r.completed_at)
    return [round(window / (ts[i + window - 1] - ts[i]) * 60, 1)
            for i in range(0, len(ts) - window + 1, window) if ts[i + window - 1] > ts[i]]


def recomputed_front(rows: Sequence[Row], limit_flops: float) -> list[int]:
    """The non-dominated completed trials within the budget, by the values Optuna stored
    (accuracy up, FLOPs down), with nothing of prunetune's: trial numbers, ascending."""
    pts = [(r.number, r.values[0], r.values[1]) for r in rows
           if r.state == "COMPLETE" and r.values and r.values[1] <= limit_flops]
    return sorted(n for n, a, c in pts
                  if not any(a2 >= a and c2 <= c and (a2 > a or c2 < c) for _, a2, c2 in pts))


def check_front(storage_url: str, rows: Sequence[Row], limit_flops: float) -> dict[str, Any]:
    """prunetune's front (``search.front`` over ``search.trial_records``, as the pipeline
    writes pareto.json) against :func:`recomputed_front` and Optuna's ``best_trials`` within
    the budget."""
    import optuna

    from prunetune.search import front, trial_records

    study = optuna.load_study(study_name=STUDY, storage=storage_url)
    ours = sorted(r["trial"] for r in front(trial_records(study), {"flops": limit_flops},
                                            OBJECTIVES))
    again = recomputed_front(rows, limit_flops)
    optuna_front = sorted(t.number for t in study.best_trials if t.values[1] <= limit_flops)
    return {"front": ours, "size": len(ours), "equal_recomputed": ours == again,
            "equal_optuna_best_trials": ours == optuna_front, "recomputed": again,
            "optuna": optuna_front}


# -- the soak (the parent: starts, kills and restarts the driver, kills workers) -----------------
def _ppid(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> list[int]:
    """PIDs of the processes under ``root`` (children, theirs, ...)."""
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            pp = _ppid(int(p))
            if pp is not None:
                children.setdefault(pp, []).append(int(p))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _title(pid: int) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0]
    except OSError:
        return b""


@dataclass
class _Watch:
    """Reads the study's completed trials cheaply while the driver writes it."""

    url: str
    seen: dict[int, tuple[float, ...]] = field(default_factory=dict)
    running: int = 0
    _engine: Any = None

    def complete(self) -> int:
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
        q = sqlalchemy.text(
            "SELECT t.number, v.objective, v.value FROM trials t JOIN studies s ON "
            "t.study_id = s.study_id JOIN trial_values v ON v.trial_id = t.trial_id WHERE "
            "s.study_name = :n AND t.state = 'COMPLETE' ORDER BY t.number, v.objective")
        try:
            with self._engine.connect() as con:
                found: dict[int, list[float]] = {}
                for number, _, value in con.execute(q, {"n": STUDY}):
                    found.setdefault(number, []).append(value)
                self.running = con.execute(sqlalchemy.text(
                    "SELECT count(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
                    "WHERE s.study_name = :n AND t.state = 'RUNNING'"), {"n": STUDY}).scalar()
        except sqlalchemy.exc.SQLAlchemyError:  # no schema yet, or locked for a moment
            return len(self.seen)
        for n, v in found.items():
            self.seen.setdefault(n, tuple(v))
        return len(found)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def soak_once(storage_url: str, run_dir: str, *, trials: int, kill_every: int,
              driver_kill_at: int, seconds: float = 0.05, timeout: float = 1800.0,
              reap_wait: float = 20.0,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """One soak on one storage; see the module's docstring. Returns the checks and numbers."""
    os.makedirs(run_dir, exist_ok=True)
    busy = os.path.join(run_dir, "busy")
    cmd = [sys.executable, os.path.abspath(__file__), "drive", "--storage", storage_url,
           "--trials", str(trials), "--run-dir", run_dir, "--seconds", str(seconds)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    driver_log = open(os.path.join(run_dir, "driver.log"), "a")

    def start() -> subprocess.Popen:
        log(f"start driver: {' '.join(cmd[1:])}")
        return subprocess.Popen(cmd, stdout=driver_log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=ROOT)

    watch = _Watch(storage_url)
    kills: list[dict[str, Any]] = []
    driver_kills: list[dict[str, Any]] = []
    next_kill = kill_every
    t0 = time.perf_counter()
    proc = start()
    try:
        while True:
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"soak on {storage_url} ran over {timeout:.0f} s")
            n = watch.complete()
            if proc.poll() is not None:
                log(f"driver exited with {proc.returncode} at {n} completed")
                break
            # The driver is killed with a trial running, so that its resume has one to close.
            if not driver_kills and n >= driver_kill_at and watch.running:
                driver_kills.append(_kill_driver(proc, n, busy, log, reap_wait))
                proc = start()
                continue
            if n >= next_kill and n < trials - 2:
                kill = _kill_worker(proc.pid, n, busy, log)
                if kill is not None:  # else no trial worker yet (a driver starting): later
                    kills.append(kill)
                    next_kill = n + kill_every
            time.sleep(0.05)
        rc = proc.returncode
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        driver_log.close()
    wall = time.perf_counter() - t0
    watch.complete()
    watch.close()
    problem, _ = problem_and_settings(trials)
    limit = problem.limits["flops"]
    rows = rows_of(storage_url)
    checks = check_trials(rows, trials, start_tags(trials), watch.seen)
    fr = check_front(storage_url, rows, limit)
    ok = checks["ok"] and fr["equal_recomputed"] and fr["equal_optuna_best_trials"] and rc == 0
    return {"ok": ok, "driver_exit": rc, "wall_s": wall, "trials_per_min": trials / wall * 60,
            "trials_per_min_by_50": rate_by_window(rows),
            **checks, "front": fr, "worker_kills": len(kills),
            "worker_kills_mid_evaluation": sum(k["mid_evaluation"] for k in kills),
            "driver_kills": len(driver_kills), "worker_kill_log": kills,
            "driver_kill_log": driver_kills}


def _kill_worker(driver: int, n: int, busy: str, log: Callable[[str], None],
                 wait: float = 3.0) -> dict[str, Any] | None:
    """SIGKILL one trial worker of this driver: one caught mid-evaluation (its busy file
    present) if one shows within ``wait`` seconds, else any trial actor; None if there is no
    trial actor."""
    actors = [p for p in descendants(driver) if _title(p).startswith(b"ray::ImplicitFunc")]
    if not actors:
        return None
    deadline = time.perf_counter() + wait
    victim = None
    while victim is None and time.perf_counter() < deadline:
        with contextlib.suppress(OSError):
            for name in os.listdir(busy):
                pid = int(name)
                if _alive(pid) and pid in descendants(driver):
                    victim = pid
                    os.kill(pid, signal.SIGKILL)
                    break
        if victim is None:
            time.sleep(0.005)
    if victim is None:
        victim = actors[0]
        with contextlib.suppress(OSError):
            os.kill(victim, signal.SIGKILL)
    for _ in range(100):  # until the kernel has taken it
        if not _alive(victim):
            break
        time.sleep(0.01)
    # The busy file outlives the process only when the evaluation never finished.
    path = os.path.join(busy, str(victim))
    mid = os.path.exists(path)
    with contextlib.suppress(OSError):
        os.remove(path)
    log(f"worker kill at {n} completed: pid {victim} "
        f"({'mid-evaluation' if mid else 'between evaluations'})")
    return {"at_complete": n, "pid": victim, "mid_evaluation": mid}


def _kill_driver(proc: subprocess.Popen, n: int, busy: str, log: Callable[[str], None],
                 reap_wait: float) -> dict[str, Any]:
    """SIGKILL the driver alone; then wait ``reap_wait`` s for its Ray processes to go, and
    kill any left (they would hold the 2 CPUs the resumed driver needs)."""
    tree = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.perf_counter() + reap_wait
    while time.perf_counter() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)
    left = [p for p in tree if _alive(p)]
    titles = sorted({_title(p).decode(errors="replace").split("/")[-1][:40] for p in left})
    for p in left:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    shutil.rmtree(busy, ignore_errors=True)
    log(f"driver kill at {n} completed (pid {proc.pid}); {len(left)} of its {len(tree)} "
        f"processes still there after {reap_wait:g} s ({', '.join(titles)}), killed")
    return {"at_complete": n, "pid": proc.pid, "processes": len(tree),
            "left_after_wait": len(left), "left_titles": titles, "wait_s": reap_wait}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak(quick: bool, log_path: str | None = None) -> dict[str, Any]:
    """``python bench/run.py soak``: 300 trials (quick: 40) on SQLite and on PostgreSQL."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from _postgres import Unavailable, local_server

    trials, kill_every, driver_at = (40, 15, 12) if quick else (300, 20, 120)
    logf = open(log_path, "w") if log_path else None

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        if logf:
            logf.write(line + "\n")
            logf.flush()

    out: dict[str, Any] = {"trials": trials, "worker_kill_every": kill_every,
                           "driver_kill_at_complete": driver_at, "workers": 2,
                           "evaluation": "stand-in: analytic score + analytic FLOPs, 0.05 s",
                           "test_split": "none (no images are scored)",
                           "space": f"{SPACE_NAME} {SPACE_CONFIG}, {SIZE} px, "
                                    f"{BUDGET:.0%} FLOPs"}
    with tempfile.TemporaryDirectory(prefix="soak-") as d:
        for kind in ("sqlite", "postgresql"):
            log(f"== {kind}")
            with contextlib.ExitStack() as stack:
                if kind == "sqlite":
                    url = f"sqlite:///{d}/sqlite/study.db"
                else:
                    try:
                        url = stack.enter_context(local_server(_free_port()))
                    except Unavailable as e:
                        out[kind] = {"skipped": str(e)}
                        continue
                res = soak_once(url, os.path.join(d, kind), trials=trials,
                                kill_every=kill_every, driver_kill_at=driver_at, log=log)
                if logf:
                    with open(os.path.join(d, kind, "driver.log")) as f:
                        logf.write(f"-- {kind} driver output\n{f.read()}")
            out[kind] = res
            log(f"{kind}: ok {res['ok']}, {res['complete']}/{trials} complete, lost "
                f"{res['lost']}, duplicated {res['duplicated']}, {res['worker_kills']} worker "
                f"kills ({res['worker_kills_mid_evaluation']} mid-evaluation), "
                f"{res['driver_kills']} driver kill, {res['wall_s']:.0f} s, "
                f"{res['trials_per_min']:.0f} trials/min")
    if logf:
        logf.close()
    out["ok"] = all(out[k].get("ok", False) for k in ("sqlite", "postgresql"))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive", help="the driver the soak starts (and kills)")
    d.add_argument("--storage", required=True)
    d.add_argument("--trials", type=int, required=True)
    d.add_argument("--run-dir", required=True)
    d.add_argument("--seconds", type=float, default=0.05)
    a = p.parse_args()
    return drive(a.storage, a.trials, a.run_dir, a.seconds)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    from prunetune.cli import exit_now

    exit_now(main())  # without the 2 s interpreter tear-down
