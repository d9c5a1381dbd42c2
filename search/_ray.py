"""Starting or attaching to Ray, on loopback unless told otherwise."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Callable, Iterator


def init_ray(address: str | None, num_cpus: int, num_gpus: int | None = None,
             log: Callable[[str], None] = print) -> str:
    """Attach to ``address`` (or ``RAY_ADDRESS``), else start a local instance.

    A local instance has Ray's dashboard off and, with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (set here unless the user set it), listens on 127.0.0.1 only.

    Returns:
        A description of the Ray instance in use.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Resume goes through the Optuna storage, not Tune experiment snapshots: snapshot rarely.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    # Ray Tune's own Ctrl-C handler only asks the running Tuner.fit to wind down, and is left
    # installed after it: a Ctrl-C during the final fine-tune was then swallowed. Ctrl-C is a
    # KeyboardInterrupt here, anywhere; the study in its storage is what a re-run continues.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    import ray

    if ray.is_initialized():
        return "ray (already initialised)"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A token-protected head needs RAY_AUTH_MODE=token here; like Ray, we never turn it on
        # by ourselves for an explicit address (that would send the token wherever it points).
        # Ray's core logs every failed connection attempt (once a second for ~20 s) to the
        # process's stderr; held back here, replayed if the attach works, dropped if it does
        # not (the caller then says why in one line).
        with _held_stderr() as held:
            _refuse_a_missing_token(address)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        sys.stderr.write(held[0])
        res = ray.cluster_resources()
        return (f"Ray cluster at {address}: {len(ray.nodes())} node(s), "
                f"{int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs")
    # address="local": always a new instance of our own, never a cluster that happens to be
    # running on this machine (plain ray.init() would attach to one and refuse num_cpus).
    with _without_ray_notice("Token authentication is enabled for this Ray cluster"):
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return (f"local Ray: {num_cpus} CPUs, {gpus} GPUs, dashboard off, loopback only"
            + (", token auth on" if _token_auth_on() else ""))


@contextlib.contextmanager
def _without_ray_notice(start: str) -> Iterator[None]:
    """Ray's log records starting with ``start`` kept off the screen: Ray 2.60 warns on every
    local start that it turned token authentication on (the start line says so instead)."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(start)

    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _token_auth_on() -> bool:
    """Whether this Ray authenticates with a token (Ray >= 2.5x; False where it cannot)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:
        return False
    return bool(is_token_auth_enabled())


def _refuse_a_missing_token(address: str) -> None:
    """One look at the GCS at ``address`` (``host:port``) before ``ray.init``: a head that
    wants a token this process lacks says so at once (``ray.exceptions.AuthenticationError``,
    raised here), where ``ray.init`` retries for 20 s and then says only that it could not
    connect. Anything else (no head there yet, another Ray) is left to ``ray.init``."""
    if "://" in address or ":" not in address:
        return
    try:
        # Ray's own client (private: skipped if it moves); compiled, so mypy cannot see it.
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    try:
        GcsClient(address=address)
    except AuthenticationError:
        raise
    except Exception:  # noqa: BLE001 - not ours to judge: ray.init retries and reports
        return


@contextlib.contextmanager
def _held_stderr() -> Iterator[list[str]]:
    """File descriptor 2 (where Ray's C++ core writes) goes to a temporary file for the block;
    what was written there is in the yielded list once the block has ended."""
    sys.stderr.flush()
    saved = os.dup(2)
    held: list[str] = []
    with tempfile.TemporaryFile("w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            held.append(tmp.read())
