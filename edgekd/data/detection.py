"""Detection data: images with boxes, split train/val/test by a fixed seed.

Labels are int64 (N, M, 5) rows ``[class, x1, y1, x2, y2]`` in pixels (x2, y2 exclusive); ``-1``
rows pad images with fewer than M objects, and an image whose rows are all ``-1`` has no labels
(an unlabelled image, as ``labelled_fraction`` and transfer sets make; so every labelled image
holds at least one box).

Sources:
- ``digits-detect`` (built-in, generated): 32x32 canvases (``data.image_size`` for others, e.g.
  [64, 64], digits scaled with the shorter side), each with 1 to 3 of scikit-learn's 8x8
  handwritten digits (``sklearn.datasets.load_digits``) scaled to 8..16 pixels and placed
  without overlapping; a digit's box is the square it was pasted into. The digit images are split
  train/val/test by the seed *before* the canvases are made, so no test digit is seen in
  training. 1,200/400/400 canvases for the default split.
- a ``.npz`` file with images ``x`` ((N,H,W), (N,C,H,W) or (N,H,W,C), as for classification)
  and boxes ``y`` (N, M, 5) as above; optional ``names`` (K,) class names. Split at random by
  the seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from edgekd.data.datasets import DataConfig, DataSplits, _images
from edgekd.errors import DataError

BUILTIN = "digits-detect"
CANVAS = 32
CANVASES = 2000  # split like the data: 1,200/400/400 for [0.6, 0.2, 0.2]
MAX_OBJECTS = 3
DIGIT_SIZES = (8, 17)  # pasted digits are 8..16 pixels square


def load_detection_data(config: DataConfig) -> DataSplits:
    """Load ``config.source`` (``digits-detect`` or a ``.npz`` with boxes) and split it by ``config.seed``.

    Raises:
        DataError: the source is missing or not detection data, or its boxes are malformed.
    """
    if config.transfer:
        raise DataError("data.transfer: transfer sets are not supported for detection yet; append the unlabelled "
                        "images to the .npz with all-(-1) label rows instead")
    if config.source == BUILTIN:
        splits = _digits_detect(config)
    else:
        path = Path(config.source).expanduser()
        if config.source == "digits" or path.suffix != ".npz":
            raise DataError(f"{config.source}: detection data is {BUILTIN!r} (built-in) or a .npz file with images x "
                            f"and boxes y (N, M, 5) rows [class, x1, y1, x2, y2]; set data.source")
        splits = _split(*_load_npz(path), config)
    if config.labelled_fraction < 1.0:
        splits = _keep_labels(splits, config.labelled_fraction, config.seed)
    return splits


def _digits_detect(config: DataConfig) -> DataSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(images))
    cuts = np.cumsum([round(f * len(images)) for f in config.split[:2]])
    pools = np.split(order, cuts)
    size = tuple(config.image_size or (CANVAS, CANVAS))
    if min(size) < CANVAS // 2:
        raise DataError(f"data.image_size {list(size)}: {BUILTIN} canvases need sides of at least {CANVAS // 2} "
                        f"pixels (digits are {DIGIT_SIZES[0]}..{DIGIT_SIZES[1] - 1} px at the default {CANVAS}, "
                        f"scaled with the shorter side)")
    parts = []
    for pool, fraction, part in zip(pools, config.split, range(3)):
        canvases = max(1, round(fraction * CANVASES))
        parts.append(_compose(images[pool], digits.target[pool], canvases,
                              np.random.default_rng([config.seed, part]), size))
    digest = hashlib.sha256(f"{BUILTIN}:{config.seed}:{config.split}:{size}".encode())
    for x, y in parts:
        digest.update(x.tobytes())
        digest.update(y.tobytes())
    tensors = [t for x, y in parts for t in (torch.from_numpy(x), torch.from_numpy(y))]
    return DataSplits(*tensors, class_names=[str(i) for i in range(10)], source=BUILTIN,
                      fingerprint=digest.hexdigest()[:16])


def _compose(images: np.ndarray, classes: np.ndarray, count: int, rng: np.random.Generator,
             canvas: tuple[int, int] = (CANVAS, CANVAS)):
    """``count`` canvases of 1..MAX_OBJECTS non-overlapping digits.  # (count, 1, H, W), (count, M, 5)"""
    h, w = canvas
    scale = min(h, w) / CANVAS
    x = np.zeros((count, 1, h, w), np.float32)
    y = np.full((count, MAX_OBJECTS, 5), -1, np.int64)
    for i in range(count):
        placed = []
        for j in range(rng.integers(1, MAX_OBJECTS + 1)):
            size = int(round(rng.integers(*DIGIT_SIZES) * scale))
            for _ in range(50):  # a free spot; a crowded canvas keeps fewer digits
                x1, y1 = (int(v) for v in rng.integers(0, [w - size + 1, h - size + 1]))
                box = (x1, y1, x1 + size, y1 + size)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in placed):
                    break
            else:
                continue
            k = int(rng.integers(len(images)))
            grid = np.arange(size) * 8 // size  # nearest-neighbour scaling of the 8x8 digit
            x[i, 0, y1:y1 + size, x1:x1 + size] = images[k][grid][:, grid]
            y[i, len(placed)] = (classes[k], *box)
            placed.append(box)
    return x, y


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = _images(npz["x"], path), np.asarray(npz["y"])
            names = [str(n) for n in npz["names"]] if "names" in npz else None
    except FileNotFoundError:
        raise DataError(f"{path}: data source not found") from None
    except KeyError as err:
        raise DataError(f"{path}: detection data needs arrays 'x' (images) and 'y' (boxes); missing {err}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__})") from None
    if y.ndim != 3 or y.shape[2] != 5 or len(y) != len(x):
        raise DataError(f"{path}: y has shape {y.shape}; detection boxes are (N, M, 5) rows [class, x1, y1, x2, y2] "
                        f"for the N={len(x)} images (pad with -1 rows)")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(y == np.round(y)):
            raise DataError(f"{path}: y holds fractional values; classes and pixel coordinates are integers")
        y = y.astype(np.int64)
    y = y.astype(np.int64)
    real = y[..., 0] >= 0
    rows = y[real]
    h, w = x.shape[-2:]
    if len(rows) == 0:
        raise DataError(f"{path}: no boxes (every row of y is -1)")
    bad = np.flatnonzero((rows[:, 1] < 0) | (rows[:, 2] < 0) | (rows[:, 3] > w) | (rows[:, 4] > h)
                         | (rows[:, 3] <= rows[:, 1]) | (rows[:, 4] <= rows[:, 2]))
    if len(bad):
        image = int(np.argwhere(real)[bad[0]][0])
        raise DataError(f"{path}: image {image} has box {rows[bad[0], 1:].tolist()}, outside the {w}x{h} image or "
                        f"empty; boxes are [x1, y1, x2, y2] pixels with x1 < x2 <= {w}, y1 < y2 <= {h}")
    num_classes = len(names) if names else int(rows[:, 0].max()) + 1
    if rows[:, 0].max() >= num_classes:
        raise DataError(f"{path}: class {int(rows[:, 0].max())} in y but only {num_classes} names")
    return x, y, names or [str(i) for i in range(num_classes)]


def _split(x: np.ndarray, y: np.ndarray, names: list[str], config: DataConfig) -> DataSplits:
    """A random split by the seed (boxes have no single class to stratify by)."""
    order = np.random.default_rng(config.seed).permutation(len(x))
    cuts = np.cumsum([round(f * len(x)) for f in config.split[:2]])
    parts = np.split(order, cuts)
    for name, part in zip(("train", "val", "test"), parts):
        if len(part) == 0:
            raise DataError(f"{config.source}: the {name} split is empty ({len(x)} images, split {config.split})")
    digest = hashlib.sha256()
    for arr in (x, y, *parts):
        digest.update(np.ascontiguousarray(arr).tobytes())
    tensors = [t for p in parts for t in (torch.from_numpy(x[p]).float(), torch.from_numpy(y[p]))]
    return DataSplits(*tensors, class_names=names, source=config.source, fingerprint=digest.hexdigest()[:16])


def _keep_labels(splits: DataSplits, fraction: float, seed: int) -> DataSplits:
    """Training may use the boxes of ``fraction`` of the train images (chosen by the seed); the
    others are unlabelled images that only distillation learns from."""
    n = len(splits.y_train)
    keep = np.zeros(n, bool)
    keep[np.random.default_rng(seed + 1).permutation(n)[:round(fraction * n)]] = True
    return dataclasses.replace(splits, train_labelled=torch.from_numpy(keep))
