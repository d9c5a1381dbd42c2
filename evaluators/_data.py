"""Image data held in memory as uint8 tensors, with a seeded stratified validation split.

Three sources: an ImageFolder root (``train/`` plus ``val/`` or ``test/``), CIFAR-10's python
format, and an embedded offline default (scikit-learn's 1,797 handwritten digits). Images are
decoded once; batches are augmented (random crop, flip) and normalised on the fly. A caller's
own torch ``Dataset``s are read once into float tensors (:func:`from_datasets`).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(ValueError):
    """Data that cannot be used, with the path and the fix in the message."""


@dataclass
class Split:
    """Images ``x`` (N×3×H×W: uint8, or float as :func:`from_datasets` reads them) and labels
    ``y`` (int64, N), held in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.numel())

    @property
    def size(self) -> int:
        return int(self.x.shape[-1])

    def fingerprint(self) -> bytes:
        return self.x.numpy().tobytes() + self.y.numpy().tobytes()


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(_decode_one(self.paths[i], self.size).transpose(2, 0, 1).copy())


@dataclass
class FileSplit:
    """Images left on disk and decoded per batch by DataLoader workers (large datasets)."""

    paths: list[str]
    y: torch.Tensor
    size: int
    workers: int = 2

    def __len__(self) -> int:
        return int(self.y.numel())

    def fingerprint(self) -> bytes:
        return "\n".join(self.paths).encode() + self.y.numpy().tobytes()

    def loader(self, order: torch.Tensor, batch_size: int
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = _Files(self.paths, self.size)
        batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        dl = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=self.workers,
                                         persistent_workers=False)
        for x, idx in zip(dl, batches):
            yield x, self.y[idx]


@dataclass
class ImageData:
    """Train / validation / test splits and how to turn them into network input.

    The validation split is carved from the training images; the search scores only on it.
    The test split is for the final evaluation alone.
    """

    name: str
    classes: list[str]
    train: Split | FileSplit
    val: Split | FileSplit
    test: Split | FileSplit
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True
    pad: int = 4
    notes: list[str] = field(default_factory=list)
    scale: float = 255.0  # the stored value of a full-intensity pixel (1.0: already float)
    val_from_train: bool = True  # the validation split was carved from the training images

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.train.size

    def describe(self) -> str:
        return (f"{self.name}: {len(self.classes)} classes, {self.image_size}x{self.image_size}, "
                f"{len(self.train)} train / {len(self.val)} val"
                f"{' (from train)' if self.val_from_train else ''} / "
                f"{len(self.test)} test images")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Stored batch (uint8 or float 0–``scale``) → normalised float batch in channels_last
        layout."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1) * self.scale
        std = torch.tensor(self.std).view(1, 3, 1, 1) * self.scale
        out = (x.float() - mean) / std
        return out.contiguous(memory_format=torch.channels_last)

    def augment(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Reflect-pad random crop and (where the data allows) horizontal flip, per image,
        vectorised over the batch."""
        n, c, h, w = x.shape
        x = x.float()
        if self.pad:
            p = self.pad
            padded = torch.nn.functional.pad(x, [p] * 4, mode="reflect")
            oy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
            x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                       rows, cols]
        if self.flip:
            mask = torch.rand(n, generator=gen) < 0.5
            x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
        return x

    def batches(self, split: Split | FileSplit, batch_size: int, *, train: bool = False,
                augment: bool | None = None, gen: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised ``(images, labels)`` batches; shuffled when ``train``, augmented when
        ``augment`` (default: same as ``train``)."""
        augment = train if augment is None else augment
        n = len(split)
        order = torch.randperm(n, generator=gen) if train else torch.arange(n)
        stop = n - (n % batch_size) if drop_last and n >= batch_size else n
        if isinstance(split, FileSplit):
            raw = split.loader(order[:stop], batch_size)
        else:
            raw = ((split.x[order[i:i + batch_size]], split.y[order[i:i + batch_size]])
                   for i in range(0, stop, batch_size))
        for x, y in raw:
            if augment:
                x = self.augment(x, gen)
            yield self.normalize(x), y


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) with ``fraction`` of each class carved out, seeded."""
    rng = np.random.default_rng(seed)
    kept, carved = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = max(1, int(round(len(idx) * fraction))) if fraction > 0 else 0
        carved.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))


TEST_HALVES = ("dev", "sealed")


def half_indices(y: np.ndarray, half: str) -> np.ndarray:
    """Sorted indices of one fixed half of a test set, per class.

    ``dev`` is every image the benchmarks before the split tested on (they all used the same
    seeded 30% of each class: ``_per_class(y, 30%, seed=0)``, the 3,000 CIFAR-10 test images on
    which start points and fine-tune recipes were chosen), topped up with the first other
    images of the class in file order to half of it; ``sealed`` is the rest, images no choice
    has seen. ``dev`` is for choosing defaults, priors and recipes; ``sealed`` only for
    headline numbers. No seed of the caller's: the halves are the same in every run.
    """
    if half not in TEST_HALVES:
        raise DataError(f"test half must be one of {list(TEST_HALVES)}, but got {half!r}.")
    counts = np.bincount(y)
    used = set(_per_class(y, int(round(0.3 * counts[counts > 0].min())), 0).tolist())
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        fresh = [i for i in idx if i not in used]
        sealed = fresh[len(fresh) - len(idx) // 2:]
        keep.append(np.array(sealed if half == "sealed" else sorted(set(idx) - set(sealed)),
                             dtype=np.int64))
    return np.sort(np.concatenate(keep))


def _per_class(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` seeded picks from each class of ``y``."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(np.sort(rng.permutation(idx)[:per_class]))
    return np.concatenate(keep)


def _subset(x: np.ndarray, y: np.ndarray, per_class: int | None, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    if per_class is None:
        return x, y
    k = _per_class(y, per_class, seed)
    return x[k], y[k]


MAX_VAL_FRACTION = 0.9  # at least a tenth of the training images is left to train on


def check_val_fraction(val_fraction: float) -> None:
    """The share of the training images carved for validation: in (0, 0.9].

    Raises:
        DataError: naming ``--val-fraction``, the value and the rule.
    """
    if not 0.0 < val_fraction <= MAX_VAL_FRACTION:
        raise DataError(f"--val-fraction must be in (0, {MAX_VAL_FRACTION:g}], but got "
                        f"{val_fraction}.")


def _finish(name: str, classes: list[str], x_train: np.ndarray, y_train: np.ndarray,
            x_test: np.ndarray, y_test: np.ndarray, val_fraction: float, seed: int,
            mean: tuple, std: tuple, flip: bool, pad: int, notes: list[str]) -> ImageData:
    check_val_fraction(val_fraction)
    kept, carved = stratified_split(y_train, val_fraction, seed)
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return ImageData(
        name=name, classes=classes,
        train=Split(t(x_train[kept]), t(y_train[kept]).long()),
        val=Split(t(x_train[carved]), t(y_train[carved]).long()),
        test=Split(t(x_test), t(y_test).long()),
        mean=mean, std=std, flip=flip, pad=pad, notes=notes)


def load_digits_data(image_size: int = 32, val_fraction: float = 0.1, seed: int = 0,
                     test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images), upscaled to RGB."""
    images, target = _bundled_digits()
    img = torch.from_numpy(images.astype(np.float32) / 16.0)[:, None]
    img = torch.nn.functional.interpolate(img, size=(image_size, image_size), mode="bilinear",
                                          align_corners=False)
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    y = target.astype(np.int64)
    train_idx, test_idx = stratified_split(y, test_fraction, seed + 1)
    xf = x[train_idx].astype(np.float32) / 255.0
    mean = tuple(float(v) for v in xf.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in xf.std(axis=(0, 2, 3)))
    return _finish("embedded digits (scikit-learn, 8x8 upscaled)", [str(i) for i in range(10)],
                   x[train_idx], y[train_idx], x[test_idx], y[test_idx], val_fraction, seed,
                   mean, std, flip=False, pad=image_size // 8,
                   notes=["data: scikit-learn's bundled handwritten digits (no --data given)"])


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' 8×8 images and labels, read from the file scikit-learn ships them in, as
    ``sklearn.datasets.load_digits`` reads it, without importing scikit-learn (1.2-1.5 s of
    every run on the embedded data here); through ``load_digits`` where that file is not."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    origin = spec.origin if spec else None
    path = os.path.join(os.path.dirname(origin), "datasets", "data", "digits.csv.gz") \
        if origin else ""
    if os.path.isfile(path):
        rows = np.loadtxt(path, delimiter=",")
        return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(int)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def _list_images(split_dir: str) -> tuple[list[str], list[tuple[str, int]]]:
    if not os.path.isdir(split_dir):
        raise DataError(f"--data: folder {split_dir!r} does not exist; give a root with "
                        f"train/ and val/ or test/ class folders.")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"--data: {split_dir!r} has no class folders; expected "
                        f"{split_dir}/<class>/<image>.")
    items = []
    for ci, c in enumerate(classes):
        for e in sorted(os.scandir(os.path.join(split_dir, c)), key=lambda e: e.name):
            if e.name.startswith("."):
                continue
            if not e.name.lower().endswith(IMG_EXTENSIONS):
                raise DataError(f"--data: {e.path!r} is not an image file; remove it or "
                                f"give a folder holding images only.")
            items.append((e.path, ci))
    return classes, items


def _decode_one(path: str, size: int | None) -> np.ndarray:
    """One image as uint8 H×W×3, resized (shorter side, then centre crop) to ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                w, h = im.size
                scale = size / min(w, h)
                # Pillow's types name only Image.Resampling.BILINEAR (9.1+); this works in all
                im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                               Image.BILINEAR)  # type: ignore[attr-defined]
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"--data: cannot decode {path!r} ({e}); remove or replace it.") from None


def _decode(items: list[tuple[str, int]], size: int | None) -> tuple[np.ndarray, np.ndarray]:
    xs = [_decode_one(path, size) for path, _ in items]
    sizes = {a.shape for a in xs}
    if len(sizes) > 1:
        raise DataError(f"--data: images have different sizes {sorted(sizes)[:3]}; "
                        f"pass --image-size to resize them.")
    x = np.stack(xs).transpose(0, 3, 1, 2)
    return x, np.array([c for _, c in items], dtype=np.int64)


def _limit(items: list[tuple[str, int]], per_class: int | None, seed: int,
           half: str | None = None) -> list:
    if half is not None:
        items = [items[i] for i in half_indices(np.array([c for _, c in items]), half)]
    if per_class is None:
        return items
    # Items are grouped by class in order, so this picks what a per-class shuffle would.
    return [items[i] for i in _per_class(np.array([c for _, c in items]), per_class, seed)]


MEMORY_LIMIT_BYTES = 4 << 30  # decoded uint8 images above this stream from disk instead


def _stream_folder(root: str, classes: list[str], train_items: list, test_items: list,
                   image_size: int | None, val_fraction: float, seed: int, mean: tuple,
                   std: tuple, cifar: bool) -> ImageData:
    size = image_size or _decode_one(train_items[0][0], None).shape[0]
    y = np.array([c for _, c in train_items], dtype=np.int64)
    kept, carved = stratified_split(y, val_fraction, seed)
    def split(items: list, idx: Iterable[int]) -> FileSplit:
        return FileSplit([items[i][0] for i in idx], torch.tensor([items[i][1] for i in idx]),
                         size)

    return ImageData(
        name=f"ImageFolder {root} (streamed)", classes=classes,
        train=split(train_items, kept), val=split(train_items, carved),
        test=split(test_items, range(len(test_items))), mean=mean, std=std, flip=True,
        pad=max(1, size // 8),
        notes=[f"data: {root} streamed from disk by DataLoader workers "
               f"({'CIFAR-10' if cifar else 'ImageNet'} normalisation)"])


def load_image_folder(root: str, image_size: int | None = None, val_fraction: float = 0.1,
                      seed: int = 0, per_class: int | None = None,
                      test_per_class: int | None = None,
                      stream: bool | None = None, test_half: str | None = None) -> ImageData:
    """An ImageFolder root with ``train/`` and ``val/`` or ``test/``.

    Small datasets are decoded once into memory; ones whose decoded images would exceed
    ``MEMORY_LIMIT_BYTES`` (or ``stream=True``) stay on disk and are decoded per batch by
    DataLoader workers (resize shorter side + centre crop to ``image_size``).

    Args:
        per_class / test_per_class: Keep at most this many images per class (seeded), for
            tests and quick runs.
        test_half: ``dev`` or ``sealed``: keep one fixed half of the test images
            (:func:`half_indices`, applied before ``test_per_class``); ``None`` keeps all.
    """
    if not os.path.isdir(root):
        raise DataError(f"--data: {root!r} is not a folder; give an ImageFolder root "
                        f"(train/ and val/ or test/ inside) or a CIFAR-10 python folder.")
    classes, train_items = _list_images(os.path.join(root, "train"))
    held = next((d for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
    if held is None:
        raise DataError(f"--data: {root!r} has no val/ or test/ folder; add one, "
                        f"with the same class folders as train/.")
    test_classes, test_items = _list_images(os.path.join(root, held))
    if test_classes != classes:
        raise DataError(f"--data: class folders of {held}/ ({test_classes[:5]}...) differ from "
                        f"train/ ({classes[:5]}...); use the same classes in both.")
    if len(classes) < 2:
        raise DataError(f"--data: {root!r} has only one class ({classes[0]!r}); "
                        f"classification needs at least two class folders.")
    counts = np.bincount([c for _, c in train_items], minlength=len(classes))
    if counts.min() < 2:
        empty = classes[int(counts.argmin())]
        raise DataError(f"--data: class {empty!r} of {root!r}/train has {counts.min()} images; "
                        f"each class needs at least 2.")
    train_items = _limit(train_items, per_class, seed)
    test_items = _limit(test_items, test_per_class if test_per_class else per_class, seed,
                        test_half)
    cifar = tuple(classes) == CIFAR10_CLASSES
    mean, std = (CIFAR_MEAN, CIFAR_STD) if cifar else (IMAGENET_MEAN, IMAGENET_STD)
    if stream is None:
        size0 = image_size or _decode_one(train_items[0][0], None).shape[0]
        stream = (len(train_items) + len(test_items)) * 3 * size0 * size0 > MEMORY_LIMIT_BYTES
    if stream:
        return _stream_folder(root, classes, train_items, test_items, image_size, val_fraction,
                              seed, mean, std, cifar)
    x_tr, y_tr = _decode(train_items, image_size)
    x_te, y_te = _decode(test_items, image_size or x_tr.shape[-1])
    size = x_tr.shape[-1]
    return _finish(f"ImageFolder {root}", classes, x_tr, y_tr, x_te, y_te, val_fraction, seed,
                   mean, std, flip=True, pad=max(1, size // 8),
                   notes=[f"data: {root} ({'CIFAR-10' if cifar else 'ImageNet'} normalisation)"])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and builtins only: a CIFAR batch file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytes")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar10_python(root: str, val_fraction: float = 0.1, seed: int = 0,
                        per_class: int | None = None, test_half: str | None = None
                        ) -> ImageData:
    """CIFAR-10 in its python format (``data_batch_1..5``, ``test_batch``)."""

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            return x, np.asarray(d["labels"], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise DataError(f"--data: {path!r} is not a CIFAR-10 python batch ({e}).") from None

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = read("test_batch")
    if test_half is not None:
        keep = half_indices(y_te, test_half)
        x_te, y_te = x_te[keep], y_te[keep]
    x_tr, y_tr = _subset(x_tr, y_tr, per_class, seed)
    x_te, y_te = _subset(x_te, y_te, per_class, seed)
    return _finish(f"CIFAR-10 python {root}", list(CIFAR10_CLASSES), x_tr, y_tr, x_te, y_te,
                   val_fraction, seed, CIFAR_MEAN, CIFAR_STD, flip=True, pad=4,
                   notes=[f"data: CIFAR-10 python batches in {root}"])


def from_datasets(train: Any, val: Any, test: Any = None, *, num_classes: int,
                  flip: bool = True, name: str = "in-memory datasets") -> ImageData:
    """A caller's own torch ``Dataset``s (``len()`` and ``ds[i] -> (image, label)``), read once.

    Images are float tensors 3×H×W, all of one square size, given to the network as they are
    (normalised or not, as the caller's transforms left them; the search adds a random crop,
    and a horizontal flip when ``flip``, when it trains). Labels are ints (or 0-d integer
    tensors) in ``[0, num_classes)``. The search scores on ``val`` only; ``test`` (``val``
    when ``None``) is for the final models. Random transforms run once: what is read is kept.

    Raises:
        DataError: a dataset that is empty or has no ``len()``, an item that is not an
            ``(image, label)`` pair, an image of another shape or type, or a label out of range;
            the message names the dataset, the item and the fix.
    """
    splits: dict[str, Split] = {}
    size: int | None = None
    for what, ds in (("train", train), ("val", val), ("test", test)):
        if ds is None:
            continue
        x, y = _read_dataset(what, ds, num_classes, size)
        size = int(x.shape[-1])
        splits[what] = Split(x, y)
    notes = [f"data: {name} (as given: no normalisation added)"]
    if test is None:
        splits["test"] = splits["val"]
        notes.append("data: no test set given; final models are tested on val")
    return ImageData(name=name, classes=[str(i) for i in range(num_classes)],
                     train=splits["train"], val=splits["val"], test=splits["test"],
                     mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), flip=flip,
                     pad=max(1, (size or 0) // 8), notes=notes, scale=1.0,
                     val_from_train=False)


def dataset_image_size(ds: Any, what: str = "train", size: int | None = None) -> int:
    """The side of the square images of a caller's dataset, from its first item (see
    :func:`from_datasets`; ``size``: the one they must have).

    Raises:
        DataError: no ``len()``, empty, or a first item that is not such an image and label.
    """
    try:
        n = len(ds)
    except TypeError:
        raise DataError(f"{what}={type(ds).__name__} has no len(); give a map-style torch "
                        f"Dataset (or a list) of (image, label) pairs.") from None
    if n == 0:
        raise DataError(f"{what} is empty; give at least one (image, label) pair.")
    img, _ = _item(ds, 0, what)
    if not (isinstance(img, torch.Tensor) and img.dim() == 3 and img.shape[0] == 3
            and img.shape[1] == img.shape[2] and img.is_floating_point()
            and (size is None or img.shape[-1] == size)):
        got = (f"a {img.dtype} tensor of shape {tuple(img.shape)}"
               if isinstance(img, torch.Tensor) else f"a {type(img).__name__}")
        need = f"3x{size}x{size}" if size else "3xHxW with H == W"
        raise DataError(f"{what}[0]: the image is {got}; images must be float tensors "
                        f"{need} (e.g. transforms.ToTensor(); a grey image x.expand(3, -1, "
                        f"-1); uint8 x.float() / 255).")
    return int(img.shape[-1])


def _item(ds: Any, i: int, what: str) -> tuple[Any, Any]:
    item = ds[i]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"{what}[{i}] is a {type(item).__name__}, not an (image, label) "
                        f"pair; give a Dataset whose items are (3xHxW tensor, int).")
    return item[0], item[1]


def _read_dataset(what: str, ds: Any, num_classes: int, size: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    size = dataset_image_size(ds, what, size)
    n = len(ds)
    x = torch.empty(n, 3, size, size)
    y = torch.empty(n, dtype=torch.long)
    for i in range(n):
        img, label = _item(ds, i, what)
        if not (isinstance(img, torch.Tensor) and img.shape == x.shape[1:]
                and img.is_floating_point()):
            got = (f"a {img.dtype} tensor of shape {tuple(img.shape)}"
                   if isinstance(img, torch.Tensor) else f"a {type(img).__name__}")
            raise DataError(f"{what}[{i}]: the image is {got}, but the first is float "
                            f"{tuple(x.shape[1:])}; give images of one size (e.g. "
                            f"transforms.Resize and CenterCrop).")
        if isinstance(label, torch.Tensor) and label.numel() == 1 \
                and not label.is_floating_point():
            label = int(label.item())
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) \
                or not 0 <= label < num_classes:
            raise DataError(f"{what}[{i}]: label {label!r} is not an int in [0, {num_classes}) "
                            f"(the model has {num_classes} outputs); give class indices.")
        x[i], y[i] = img, int(label)
    return x, y


def load_data(root: str | None, *, image_size: int | None = None, val_fraction: float = 0.1,
              seed: int = 0, per_class: int | None = None,
              test_per_class: int | None = None, stream: bool | None = None,
              test_half: str | None = None) -> ImageData:
    """Load ``root`` (ImageFolder or CIFAR-10 python), or the embedded digits when ``None``.
    ``test_half`` (``dev`` / ``sealed``) keeps one fixed half of a folder's test images."""
    if root is None:
        return load_digits_data(image_size or 32, val_fraction, seed)
    if os.path.isfile(os.path.join(root, "data_batch_1")):
        return load_cifar10_python(root, val_fraction, seed, per_class, test_half)
    return load_image_folder(root, image_size, val_fraction, seed, per_class, test_per_class,
                             stream, test_half)
