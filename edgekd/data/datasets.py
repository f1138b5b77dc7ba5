"""Datasets for distillation: tensors in memory, split train/val/test by a fixed seed.

Sources:
- ``digits``: the 8x8 handwritten digits of UCI ML hand-written digits (E. Alpaydin, C. Kaynak,
  1998), 1,797 images in 10 classes, as shipped by scikit-learn (``sklearn.datasets.load_digits``).
  Pixels 0..16 are scaled to [0, 1].
- a ``.npz`` file with arrays ``x`` (N,H,W), (N,C,H,W) or (N,H,W,C) and integer labels ``y`` (N,).
  uint8 images are scaled by 1/255, floats are used as they are.
- an image folder ``root/<class name>/<image>.png|jpg|...``; classes are the sorted folder names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd.config import Config, FieldError
from edgekd.data import inputs as model_inputs
from edgekd.data.text_config import TextConfig
from edgekd.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


MAX_BATCH_SIZE = 65_536  # larger is a typo (1e9), and would not fit in memory anyway


@dataclass
class DataConfig(Config):
    """Which data to use and how to split it.

    Attributes:
        source: "digits", a path to a ``.npz`` file, or a path to an image folder.
        split: fractions for train/val/test, summing to 1.
        seed: seed of the split (the same seed always gives the same split).
        batch_size: training batch size.
        augment: random shifts of up to ``shift`` pixels during training.
        shift: maximum shift in pixels for augmentation.
        image_size: [H, W] that image-folder images are resized to (default: the first image's size).
        labelled_fraction: fraction of the train split whose labels training may use (stratified,
            fixed by ``seed``); the rest is an unlabelled transfer set that only distillation
            learns from. 0 distils without any label.
        transfer: an extra unlabelled transfer set: a ``.npz`` with an array ``x`` shaped like
            the data, appended to the train split without labels.
        text: how text sources are read and tokenized (``edgekd.data.text.TextConfig``; text tasks).
    """

    source: str = "digits"
    split: list[float] = dataclasses.field(default_factory=lambda: [0.6, 0.2, 0.2])
    seed: int = 0
    batch_size: int = 64
    augment: bool = True
    shift: int = 1
    image_size: list[int] | None = None
    labelled_fraction: float = 1.0
    transfer: str | None = None
    text: TextConfig = dataclasses.field(default_factory=TextConfig)

    def __post_init__(self):
        if not 0.0 <= self.labelled_fraction <= 1.0:
            raise FieldError("labelled_fraction", f"expected a fraction in [0, 1], got {self.labelled_fraction}")
        if (len(self.split) != 3 or not all(math.isfinite(f) and f > 0 for f in self.split)
                or abs(sum(self.split) - 1) > 1e-6):
            raise FieldError("split", f"expected three positive fractions summing to 1 "
                                      f"(train, val, test), got {self.split}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise FieldError("batch_size", f"expected 1..{MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.shift < 0:
            raise FieldError("shift", f"must be >= 0, got {self.shift}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise FieldError("image_size", f"expected [height, width], got {self.image_size}")


@dataclass
class DataSplits:
    """Train/val/test tensors. x is the model's input: one tensor, float32 (N, C, H, W) for images,
    or a tuple of tensors in the task's input order (``edgekd.data.inputs``); y holds int64 labels,
    (N,) per sample or (N, L) per position, -1 where there is none."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    source: str
    fingerprint: str  # sha256 of the data and split: changes when either changes
    train_labelled: torch.Tensor | None = None  # (N_train,) bool; None: every label is usable
    texts: dict[str, list[str]] | None = None  # text data: the texts of each split ("train", "val", "test")
    vocab_size: int | None = None  # text data: the tokenizer's vocabulary
    length_buckets: list[int] | None = None  # text data: training batch lengths (``TextConfig.buckets``)
    group_by_length: bool = False  # text data: training batches of similar lengths
    transfer_rows: int = 0  # text data: the last training samples are unlabelled transfer text

    def target_train_inputs(self):
        """The training inputs without the transfer text (``TextConfig.transfer``): the target
        corpus, whose tokens vocabulary pruning keeps."""
        end = model_inputs.num_samples(self.x_train) - self.transfer_rows
        return model_inputs.take(self.x_train, slice(0, end))

    def calibration_batches(self, batch_size: int, count: int) -> list:
        """The first ``count`` training batches, un-augmented, for quantization observers."""
        end = min(model_inputs.num_samples(self.x_train), count * batch_size)
        return model_inputs.batches(model_inputs.take(self.x_train, slice(0, end)), batch_size)

    def with_label_fraction(self, fraction: float, seed: int) -> DataSplits:
        """A copy whose training may use only ``fraction`` of the train labels (see
        ``DataConfig.labelled_fraction``)."""
        return dataclasses.replace(self, train_labelled=_labelled_mask(self.y_train, fraction, seed))

    def visible_train_labels(self) -> torch.Tensor:
        """Train labels with -1 where training may not use them.  # (N_train, ...)"""
        if self.train_labelled is None:
            return self.y_train
        mask = self.train_labelled.reshape(-1, *[1] * (self.y_train.dim() - 1))  # (N, 1, ...): per-position and box labels
        return torch.where(mask, self.y_train, torch.full_like(self.y_train, -1))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The sample shape of the (first) input, e.g. (C, H, W)."""
        return tuple(model_inputs.as_tuple(self.x_train)[0].shape[1:])


def load_data(config: DataConfig) -> DataSplits:
    """Load ``config.source`` and split it by ``config.seed``.

    Raises:
        DataError: the source is missing, of an unknown kind, or has bad shapes or labels.
    """
    if config.source == "digits":
        x, y, names = _load_digits()
    else:
        path = Path(config.source).expanduser()
        if not path.exists():
            raise DataError(f"{path}: data source not found; use 'digits' (built-in), a .npz file "
                            f"with arrays x and y, or an image folder root/<class>/<image>")
        if path.is_dir():
            x, y, names = _load_image_folder(path, config.image_size)
        elif path.suffix == ".npz":
            x, y, names = _load_npz(path)
        else:
            raise DataError(f"{path}: unsupported data file type {path.suffix!r}; use a .npz file "
                            f"with arrays x and y, or an image folder root/<class>/<image>")
    _check_labels(y, len(names), config.source)
    splits = _split(x, y, names, config)
    if config.labelled_fraction < 1.0:
        splits = splits.with_label_fraction(config.labelled_fraction, config.seed)
    if config.transfer:
        _append_transfer(splits, Path(config.transfer).expanduser())
    return splits


def _labelled_mask(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Keep ``fraction`` of each class's labels (at least one per class when fraction > 0)."""
    rng = np.random.default_rng(seed + 1)
    mask = np.zeros(len(y), bool)
    for cls in np.unique(y.numpy()):
        idx = rng.permutation(np.flatnonzero(y.numpy() == cls))
        keep = int(round(fraction * len(idx)))
        mask[idx[:max(keep, 1) if fraction > 0 else 0]] = True
    return torch.from_numpy(mask)


def _append_transfer(splits: DataSplits, path: Path) -> None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = _images(npz["x"], path)
    except FileNotFoundError:
        raise DataError(f"{path}: transfer set not found") from None
    except KeyError:
        raise DataError(f"{path}: a transfer set needs an array named 'x'") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__})") from None
    if tuple(x.shape[1:]) != tuple(splits.x_train.shape[1:]):
        raise DataError(f"{path}: transfer images are {tuple(x.shape[1:])}, the data is "
                        f"{tuple(splits.x_train.shape[1:])} (C, H, W)")
    n = len(x)
    labelled = splits.train_labelled if splits.train_labelled is not None else torch.ones(len(splits.y_train), dtype=torch.bool)
    splits.x_train = torch.cat([splits.x_train, torch.from_numpy(x)])
    splits.y_train = torch.cat([splits.y_train, torch.full((n,), -1, dtype=torch.long)])
    splits.train_labelled = torch.cat([labelled, torch.zeros(n, dtype=torch.bool)])
    splits.fingerprint = hashlib.sha256((splits.fingerprint + hashlib.sha256(x.tobytes()).hexdigest()).encode()).hexdigest()[:16]


def _load_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return x, digits.target.astype(np.int64), [str(i) for i in range(10)]


def _images(x: np.ndarray, path: Path) -> np.ndarray:
    """Images of a .npz as float32 (N, C, H, W), (N, H, W) and NHWC accepted. Integer pixels of any
    integer dtype are scaled to [0, 1] like uint8: by 1/255 when they lie in 0..255, by 1/65535
    for 16-bit images; floats are taken as they are."""
    if np.issubdtype(x.dtype, np.integer) and not np.issubdtype(x.dtype, np.bool_):
        low, high = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if low < 0 or high > 65535:
            raise DataError(f"{path}: x holds integer pixels in {low}..{high}; expected 8-bit (0..255) or "
                            f"16-bit (0..65535) images, or float images")
        x = x.astype(np.float32) / (255.0 if high <= 255 and x.dtype != np.uint16 else 65535.0)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    else:
        raise DataError(f"{path}: x has dtype {x.dtype}; expected uint8 or float images")
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    elif x.ndim != 4:
        raise DataError(f"{path}: x has shape {x.shape}; expected (N,H,W), (N,C,H,W) or (N,H,W,C)")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: x contains NaN or infinite values")
    return x


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file: truncated, corrupt, or not written by "
                        f"np.savez ({type(err).__name__})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found "
                        f"{', '.join(arrays) or 'none'}. Save with np.savez(path, x=images, y=labels)")
    x, y = _images(arrays["x"], path), arrays["y"]
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: y has shape {y.shape} but x has {len(x)} samples; "
                        f"expected y of shape ({len(x)},)")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{path}: y has dtype {y.dtype}; expected integer class labels 0..K-1")
    num_classes = int(y.max()) + 1 if len(y) else 0
    if num_classes > len(y):
        raise DataError(f"{path}: label {int(y.max())} is out of range for {len(y)} samples; labels "
                        f"must be class indices 0..K-1 (remap them, e.g. with np.unique(y, "
                        f"return_inverse=True))")
    present = np.unique(y[y >= 0]) if len(y) else y
    missing = sorted(set(range(num_classes)) - set(present.tolist()))
    if missing and len(present) >= 2:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise DataError(f"{path}: labels use {len(present)} of the class indices 0..{num_classes - 1}; classes "
                        f"{shown} have no sample, so the model would get {len(missing)} empty class(es). "
                        f"Remap the labels to 0..{len(present) - 1}, e.g. y = np.unique(y, return_inverse=True)[1]")
    return x, y.astype(np.int64), [str(i) for i in range(num_classes)]


def _load_image_folder(root: Path, size: list[int] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow: pip install pillow") from None
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders found; expected root/<class name>/<image files>")
    images, labels, mode = [], [], None
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            try:
                with Image.open(file) as img:
                    mode = mode or ("L" if img.mode in ("1", "L", "I;16", "I") else "RGB")
                    img = img.convert(mode)
                    target = tuple(size) if size else (img.height, img.width)
                    if size is None and images and images[0].shape[:2] != target:
                        raise DataError(f"{file}: size {img.width}x{img.height} differs from the first "
                                        f"image; set data.image_size: [H, W] to resize all images")
                    if (img.height, img.width) != target:
                        img = img.resize((target[1], target[0]), Image.BILINEAR)
                    images.append(np.asarray(img, dtype=np.float32) / 255.0)
            except DataError:
                raise
            except (OSError, ValueError) as err:
                raise DataError(f"{file}: cannot read image ({err})") from None
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images found in the class folders "
                        f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.asarray(labels, dtype=np.int64), classes


def _check_labels(y: np.ndarray, num_classes: int, source: str) -> None:
    if len(y) == 0:
        raise DataError(f"{source}: the dataset is empty")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"{source}: labels must be in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{source}: only one class ({present[0]}) present; classification needs >= 2")


def split_indices(y: np.ndarray, split: list[float], seed: int) -> list[np.ndarray]:
    """Stratified train/val/test indices: each class (all samples, when unlabelled: one class
    of -1) is shuffled by the seed and cut by the split fractions."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_train = int(round(split[0] * len(idx)))
        n_val = int(round(split[1] * len(idx)))
        for part, chunk in zip(parts, (idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:])):
            part.append(chunk)
    return [rng.permutation(np.concatenate(p)) for p in parts]


def _split(x: np.ndarray, y: np.ndarray, names: list[str], config: DataConfig) -> DataSplits:
    """Stratified split: each class is shuffled by the seed and cut by the split fractions."""
    train, val, test = split_indices(y, config.split, config.seed)
    for name, part in (("train", train), ("val", val), ("test", test)):
        if len(part) == 0:
            raise DataError(f"{config.source}: the {name} split is empty ({len(y)} samples, "
                            f"split {config.split}); use more data or larger fractions")
    digest = hashlib.sha256()
    for arr in (x, y, train, val, test):
        digest.update(np.ascontiguousarray(arr).tobytes())
    t = lambda idx: (torch.from_numpy(x[idx]).float(), torch.from_numpy(y[idx]).long())  # noqa: E731
    return DataSplits(*t(train), *t(val), *t(test), class_names=names, source=config.source,
                      fingerprint=digest.hexdigest()[:16])


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with zeros.  # (N,C,H,W)"""
    if max_shift == 0:
        return x
    n = len(x)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    return shift_by(x, dy, dx, max_shift)


def view_shift(x: torch.Tensor, index: torch.Tensor, view: int, max_shift: int, seed: int) -> torch.Tensor:
    """The shift of augmentation ``view`` of samples ``index``: the same (sample, view) always
    gets the same shift, so a teacher cache keyed by (index, view) stays valid.  # (N,C,H,W)"""
    if max_shift == 0:
        return x
    span = 2 * max_shift + 1
    mixed = (index.long() * 1_000_003 + view * 7_919 + seed * 104_729) % (span * span)  # (N,)
    return shift_by(x, mixed // span, mixed % span, max_shift)


def shift_by(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Crop each padded image at offsets (dy, dx) in [0, 2*max_shift].  # (N,C,H,W)"""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)  # (N, C, H+2s, W+2s)
    rows = (dy[:, None] + torch.arange(h)[None])  # (N, H)
    cols = (dx[:, None] + torch.arange(w)[None])  # (N, W)
    batch = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
