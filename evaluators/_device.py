"""Which device and precision each stage runs in: one choice, resolved once, carried through.

``resolve_device("auto")`` is ``cuda`` where torch sees a GPU, else ``cpu``; asking for CUDA
where there is none is a :class:`DeviceError` (a user mistake, reported in one line), never a
hang. ``resolve_precision("auto", device)`` is bf16 autocast on a GPU that supports it, fp16
(with gradient scaling) on older GPUs, and fp32 on the CPU. :func:`autocast` and
:func:`grad_scaler` are what the training loops use.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    """One of :data:`PRECISIONS` (``auto`` is resolved where the model trains), or a
    ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {list(PRECISIONS)}, but got "
                         f"{precision!r}.")


class DeviceError(ValueError):
    """The device or precision asked for does not exist here; the message says the fix."""


def resolve_device(spec: str = "auto") -> str:
    """``auto`` → ``cuda`` if torch sees a GPU, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N``
    are checked against this machine.

    Raises:
        DeviceError: an unknown name, or CUDA asked for where torch sees no GPU (or fewer).
    """
    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    kind, _, index = spec.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise DeviceError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N; give e.g. "
                          f"--device cuda.")
    if not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
               else f"torch {torch.__version__} finds no GPU or driver")
        raise DeviceError(f"device {spec!r} asked for, but {why}; use --device cpu (or auto), "
                          f"or run where a CUDA GPU is visible.")
    if index and int(index) >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r} asked for, but torch sees "
                          f"{torch.cuda.device_count()} GPU(s) (cuda:0..cuda:"
                          f"{torch.cuda.device_count() - 1}); give one of those.")
    return spec


def resolve_precision(spec: str, device: str) -> str:
    """The training precision for ``device``: ``auto`` → ``bf16`` on a GPU with bf16, ``fp16``
    on an older GPU, ``fp32`` on the CPU.

    Raises:
        DeviceError: an unknown name, or fp16 asked for on the CPU (no fast fp16 kernels there).
    """
    if spec not in PRECISIONS:
        raise DeviceError(f"precision {spec!r} is not one of {list(PRECISIONS)}.")
    cuda = torch.device(device).type == "cuda"
    if spec == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if spec == "fp16" and not cuda:
        raise DeviceError("precision 'fp16' needs a CUDA device; on the CPU use fp32 or bf16.")
    return spec


def configure_backends(device: str) -> None:
    """What a GPU run wants, chosen on purpose: cuDNN picks the fastest convolution algorithm
    for each shape it sees (candidates differ in width, so each new shape is tried once), and
    fp32 matmuls/convolutions may use TF32 tensor cores. Nothing changes on the CPU."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision autocast for ``bf16`` / ``fp16`` on ``device``; a no-op for fp32."""
    dev = torch.device(device)
    if precision not in _DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (bf16 keeps fp32's exponent range)."""
    dev = torch.device(device)
    return torch.amp.GradScaler(dev.type, enabled=precision == "fp16")


@contextlib.contextmanager
def cuda_timer(device: torch.device) -> Iterator[list[float]]:
    """Milliseconds between entering and leaving, by CUDA events on ``device``'s stream (the
    GPU's own clock, no host overhead counted); the value is appended to the yielded list."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    out: list[float] = []
    start.record(torch.cuda.current_stream(device))
    yield out
    end.record(torch.cuda.current_stream(device))
    end.synchronize()
    out.append(start.elapsed_time(end))
