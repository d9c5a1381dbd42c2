"""The dense base model: torchvision weights, a local checkpoint, or trained here and cached."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from typing import Callable

import torch
import torch.nn as nn

from prunetune._text import first_line
from prunetune.spaces import SearchSpace

from ._data import ImageData
from ._device import resolve_precision
from ._io import atomic_write_bytes
from ._progress import Eta
from ._train import evaluate, train_steps


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, the problem and the fix."""


def cache_dir() -> str:
    return os.environ.get("PRUNETUNE_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                          "prunetune"))


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load tensors from ``path`` with ``weights_only=True``; nothing in the file is executed.

    Raises:
        CheckpointError: missing, truncated/corrupt, or holding objects other than tensors.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"--checkpoint {path!r} is a folder; give a .pt state_dict file.")
    if not os.path.isfile(path):
        raise CheckpointError(f"--checkpoint {path!r} does not exist; give a .pt state_dict file.")
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (PK), or a pickle (protocol byte 0x80) before torch 1.6.
    if head[:2] != b"PK" and head[:1] != b"\x80":
        what = ("is empty" if not head else "is truncated or not a PyTorch file (it is neither "
                "a zip archive nor a pickle)")
        raise CheckpointError(f"--checkpoint {path!r} {what}; give a .pt file written by "
                              f"torch.save(model.state_dict(), path).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = first_line(e, 160)
        raise CheckpointError(f"--checkpoint {path!r} was refused: it holds objects other than "
                              f"tensors ({first}); save a plain state_dict with "
                              f"torch.save(model.state_dict(), path).") from None
    except Exception as e:  # noqa: BLE001 - a file that is not one fails in many ways:
        # RuntimeError, EOFError, BadZipFile, and from the unpickler IndexError ("pop from
        # empty list", a file holding "."), KeyError, struct.error.
        first = first_line(e, 160)
        raise CheckpointError(f"--checkpoint {path!r} is truncated or not a PyTorch file "
                              f"({first}); re-save or re-download it.") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"--checkpoint {path!r} is not a state_dict (a dict of tensors); "
                              f"save one with torch.save(model.state_dict(), path).")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str,
              head: str) -> list[str]:
    """Load ``state`` into ``model``, resizing the classifier ``head`` (a module name, e.g.
    ``SearchSpace.head``) if the class count differs.

    Returns:
        Notes for the user (e.g. that the head was re-initialised).

    Raises:
        CheckpointError: naming the first tensor that is missing, unexpected or mis-shaped.
    """
    own = model.state_dict()
    notes = []
    head_keys = [k for k in own if k.startswith(head + ".")]
    if all(k in state for k in head_keys) and any(state[k].shape != own[k].shape
                                                  for k in head_keys):
        old = state[f"{head}.weight"].shape[0]
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        state.update({k: own[k] for k in head_keys})
        notes.append(f"base: classifier head resized from {old} to {own[head_keys[0]].shape[0]} "
                     f"classes (new head is untrained)")
    for k, v in own.items():
        if k not in state:
            raise CheckpointError(f"{source}: tensor {k!r} {tuple(v.shape)} is missing; the file "
                                  f"is not a checkpoint of this model (check --model/--width).")
        if state[k].shape != v.shape:
            raise CheckpointError(f"{source}: tensor {k!r} has shape {tuple(state[k].shape)}, the "
                                  f"model expects {tuple(v.shape)}; check --model/--width.")
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor {extra[0]!r}; the file is not a "
                              f"checkpoint of this model (check --model/--width).")
    model.load_state_dict(state)
    return notes


def torchvision_state(model_name: str, weights: str) -> dict[str, torch.Tensor]:
    """torchvision's weights by name: downloaded when online, read from the torch cache if not."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(model_name)
        w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        names = [m.name for m in get_model_weights(model_name)]
        raise CheckpointError(f"--weights {weights!r} is not a torchvision weight of "
                              f"{model_name}; valid names are {names}.") from None
    try:
        return w.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # noqa: BLE001 - URLError, OSError, HTTP errors all mean "not here"
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise CheckpointError(f"--weights {weights}: could not download or find {w.url} in "
                              f"{cache} ({type(e).__name__}); copy the file there or pass "
                              f"--checkpoint.") from None


def data_fingerprint(data: ImageData) -> str:
    h = hashlib.sha256()
    for split in (data.train, data.val):
        h.update(split.fingerprint())
    return h.hexdigest()[:16]


def train_base(space: SearchSpace, data: ImageData, epochs: int, *, lr: float = 0.05,
               batch_size: int = 32, seed: int = 0, device: str = "cpu",
               precision: str = "auto", log: Callable[[str], None] = print) -> nn.Module:
    """Train the dense network from scratch (cosine LR, label smoothing), for ``epochs``, on
    ``device``; the model is returned on the CPU."""
    torch.manual_seed(seed)
    # torch's types have no overload of Module.to for a device and a memory format together
    model = space.build_model().to(  # type: ignore[call-overload]
        device, memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(1, len(data.train) // batch_size)
    total = epochs * per_epoch
    opt = None
    eta = Eta(epochs)
    for ep in range(epochs):
        opt = train_steps(model, data, per_epoch, lr=lr, batch_size=batch_size, gen=gen,
                          label_smoothing=0.1, start_step=ep * per_epoch, total_steps=total,
                          optimizer=opt, precision=precision)
        log(f"  base epoch {ep + 1}/{epochs}: val acc {evaluate(model, data, data.val):.2%} | "
            f"{eta.step()}")
    return model.cpu()


def _cache_path(space: SearchSpace, data: ImageData, epochs: int, seed: int, device: str,
                precision: str) -> str:
    """Where a base trained here is cached: one file per space, data, epochs, seed, device
    type and (resolved) precision; a base trained in bf16 on a GPU is not the CPU's fp32 one."""
    key = hashlib.sha256(json.dumps({
        "space": space.name, "config": space.config(), "data": data_fingerprint(data),
        "epochs": epochs, "seed": seed, "device": torch.device(device).type,
        "precision": resolve_precision(precision, device)}, sort_keys=True).encode())
    return os.path.join(cache_dir(), f"base-{space.name}-{key.hexdigest()[:16]}.pt")


# Bases shipped with prunetune, named as the cache names them: the main job's own (MobileNetV2-1.0
# trained 30 epochs on the embedded digits, seed 0, CPU fp32), so that a first run prunes a
# trained network at once, as a user's run does, instead of training one for 45-90 s.
# Weights in half precision (4.6 MB); `python bench/ship_base.py` makes them again.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def shipped_path(path: str) -> str:
    """Where the base for the cache key of ``path`` (its file) ships, if it does."""
    return os.path.join(SHIPPED_DIR, os.path.basename(path)[:-len(".pt")] + ".fp16.pt")


def shipped_base(path: str) -> str | None:
    """The shipped base for the cache key of ``path`` (its file), or None."""
    found = shipped_path(path)
    return found if os.path.isfile(found) else None


def get_base_model(space: SearchSpace, data: ImageData, *, weights: str | None = None,
                   checkpoint: str | None = None, epochs: int = 30, seed: int = 0,
                   device: str = "cpu", precision: str = "auto",
                   log: Callable[[str], None] = print) -> tuple[nn.Module, str]:
    """The dense base (on the CPU) and a one-line description of where it came from; a base
    trained here is trained on ``device`` in ``precision``."""
    model = space.build_model()
    if checkpoint:
        notes = load_into(model, read_state_dict(checkpoint), f"--checkpoint {checkpoint}",
                          space.head)
        for n in notes:
            log(n)
        return model, f"checkpoint {checkpoint}"
    if weights:
        notes = load_into(model, torchvision_state(space.weights_name, weights),
                          f"--weights {weights}", space.head)
        for n in notes:
            log(n)
        return model, f"torchvision {space.weights_name} {weights}"
    path = _cache_path(space, data, epochs, seed, device, precision)
    if os.path.isfile(path):
        load_into(model, read_state_dict(path), path, space.head)
        return model, f"trained here ({epochs} epochs), cached at {path}"
    shipped = shipped_base(path)
    if shipped is not None:
        load_into(model, read_state_dict(shipped), shipped, space.head)  # halves widen here
        return model, (f"shipped with prunetune for these settings, trained {epochs} epochs "
                       f"on {data.name} (seed {seed}, CPU fp32; other base settings train one "
                       f"here)")
    log(f"base: no --checkpoint/--weights given; training {space.name} for {epochs} epochs "
        f"on {data.name} (cached for later runs)")
    model = train_base(space, data, epochs, seed=seed, device=device, precision=precision,
                       log=log)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(path, buf.getvalue())
    return model, f"trained here ({epochs} epochs), cached at {path}"
