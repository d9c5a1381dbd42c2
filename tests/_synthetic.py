"""Small, learnable CIFAR-like data and a base trained on it, made by the tests themselves.

A fresh clone has no real CIFAR-10 or pretrained checkpoint beside it, so the tests generate
a stand-in with the same layout: an ImageFolder tree ``data/cifar10/{train,test}/<class>/``
of 32×32 RGB JPEGs, and ``models/mobilenet_v2_cifar10.pt``, a state_dict for
``torchvision.models.mobilenet_v2(num_classes=10)`` trained on it.

The base ships with the tests (``SHIPPED_BASE``, its weights stored in half precision: 4.6 MB)
rather than being trained in every session (13-19 s on the 2-core VM, a fifth of the fast
subset). ``python tests/_synthetic.py`` trains it again with ``train_base_checkpoint``;
``test_the_shipped_base_is_trained_on_the_generated_data`` says when the generator has changed
under it.
"""

from __future__ import annotations

import colorsys
import io
import os
from pathlib import Path

import numpy as np
import torch

# CIFAR-10's class names: ``load_image_folder`` picks CIFAR normalisation for exactly these,
# so the synthetic data goes through the same preprocessing as the real set.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
# Each class has its own hue (ten evenly spaced on the colour wheel, jittered) drawn as one
# of five patterns on a grey background, so a network picks up the colour within a few epochs
# and the pattern adds a second cue. Every pattern is unchanged in kind by a horizontal flip and
# a shifted crop (the training augmentation), so augmentation never turns one class into another.
PATTERNS = ("h_stripes", "v_stripes", "checker", "rings", "disc")
DATA_SUBDIR = os.path.join("data", "cifar10")
BASE_NAME = os.path.join("models", "mobilenet_v2_cifar10.pt")
SHIPPED_BASE = Path(__file__).parent / "assets" / "mobilenet_v2_synthetic_fp16.pt"


def _image(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 HxWx3 image of class ``cls``: its pattern in its (jittered) colour over a grey
    background, plus pixel noise."""
    pattern = PATTERNS[cls % len(PATTERNS)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(5.0, 9.0)
    phase = rng.uniform(0.0, 2 * np.pi)
    wave = lambda t: np.sin(2 * np.pi * t / period + phase) > 0  # noqa: E731
    if pattern == "h_stripes":
        mask = wave(yy)
    elif pattern == "v_stripes":
        mask = wave(xx)
    elif pattern == "checker":
        mask = wave(yy) ^ (np.sin(2 * np.pi * xx / period + rng.uniform(0, 2 * np.pi)) > 0)
    else:
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        r = np.hypot(yy - cy, xx - cx)
        mask = wave(r) if pattern == "rings" else r < rng.uniform(0.2, 0.35) * size
    fg = 255 * np.array(colorsys.hsv_to_rgb((cls / len(CLASSES) + rng.normal(0, 0.015)) % 1.0,
                                            rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9)))
    bg = np.full(3, rng.uniform(60, 200))
    img = np.where(mask[..., None], fg, bg) + rng.normal(0.0, 18.0, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, train_per_class: int = 40, test_per_class: int = 20,
                      size: int = 32, seed: int = 0) -> Path:
    """Write the synthetic ImageFolder tree under ``root`` and return ``root``. Deterministic
    for a given seed; every image is distinct (random phase, colours and noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_image(c, size, rng)).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def train_base_checkpoint(data_root: Path, path: Path, epochs: int = 20) -> Path:
    """Train width-1.0 MobileNetV2 (10 classes) on ``data_root`` with the project's own
    trainer and save its state_dict to ``path``.

    20 epochs over the 360 training images (~7k image passes, 13 s on this 2-core VM) reach
    95-100% test accuracy; a 50%-pruned copy then scores 20-40% after BatchNorm recalibration
    (chance before), which test_adaptive_bn_raises_pruned_score relies on. At 10 epochs that
    copy stayed at chance even after recalibration.
    Two threads, whatever the machine's setting: the same base on every machine with the same
    kernels (a thread count splits the reductions), 13 s here where one thread took 17 s.
    """
    from prunetune.evaluators import load_data, train_base
    from prunetune.spaces import get_space

    data = load_data(str(data_root), seed=0)
    space = get_space("mobilenet_v2", num_classes=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = train_base(space, data, epochs, lr=0.05, batch_size=32, seed=0,
                           log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def write_shipped_base(path: Path) -> Path:
    """The shipped base as the float32 state_dict ``train_base_checkpoint`` writes (its half
    precision weights widened: the same test accuracy to the image on the generated data)."""
    halves = torch.load(SHIPPED_BASE, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in halves.items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


if __name__ == "__main__":  # python tests/_synthetic.py: train the shipped base again
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = make_image_folder(Path(tmp) / "data")
        state = torch.load(train_base_checkpoint(root, Path(tmp) / "base.pt"), weights_only=True)
    SHIPPED_BASE.parent.mkdir(exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
               SHIPPED_BASE)
    print(f"wrote {SHIPPED_BASE} ({SHIPPED_BASE.stat().st_size / 1e6:.1f} MB)")
