from __future__ import annotations

import os
import random

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("PRUNETUNE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
CIFAR = os.path.join(SHARED, "data", "cifar10")
BASE_CKPT = os.path.join(SHARED, "models", "mobilenet_v2_cifar10.pt")

# Every Ray instance a test starts binds to loopback only (see README, "Network").
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
torch.set_num_threads(2)


def random_policy(space, rng: random.Random) -> dict[str, float]:
    choices = space.ratio_choices()
    return {n: rng.choice(choices) for n in space.group_names}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Base models trained by tests are cached per session, never in the user's cache.
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


needs_shared = pytest.mark.skipif(not os.path.isdir(CIFAR),
                                  reason=f"shared data not found at {CIFAR}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server on 127.0.0.1 with its data directory in a temp folder."""
    import shutil
    import subprocess

    import glob

    bindir = (sorted(glob.glob("/usr/lib/postgresql/*/bin")) or ["/nonexistent"])[-1]
    initdb = shutil.which("initdb") or os.path.join(bindir, "initdb")
    pg_ctl = shutil.which("pg_ctl") or os.path.join(bindir, "pg_ctl")
    if not os.path.exists(initdb):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    import pathlib
    import tempfile

    # Not under pytest's tmp folder: that is private to root, and the server runs as postgres.
    data = pathlib.Path(tempfile.mkdtemp(prefix="prunetune-pg-"))
    # PostgreSQL refuses to run as root: run it as the 'postgres' user when we are root.
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        os.chmod(data, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(as_user + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                              f"-c listen_addresses=127.0.0.1 -p {port} -k {data}", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
