"""A memory-mapped cache of teacher outputs, keyed by dataset, teacher and augmentation view.

When the student is small, running the teacher costs most of a distillation epoch. With a fixed
number of augmentation views per sample (``edgekd.data.datasets.view_shift``: the same (sample,
view) always gets the same augmentation), the teacher's answer for (sample, view) never changes,
so it is computed once and read back afterwards, as in FKD (Shen & Xing 2022, "A Fast Knowledge
Distillation Framework for Visual Recognition"). The price is augmentation diversity: a student
sees ``views`` versions of each sample instead of a fresh one every epoch (Beyer et al. 2022,
"Knowledge distillation: A good teacher is patient and consistent", argue for many views).

Layout, one folder per key::

    cache_dir/<key>/outputs.f32   float32 memmap (views, num_samples, width)
                    filled.u8     uint8 memmap (views, num_samples): 1 = that row is written
                    meta.json     the key fields and width, written atomically, last

``key`` = sha256 (16 hex) of dataset fingerprint, teacher fingerprint, augmentation, kind, k,
views, num_samples and ``CACHE_FORMAT_VERSION``; a change to any of them opens a fresh folder.
``width`` = K for logits (the product of a sample's output shape for outputs of more axes, e.g.
a detection head's (A, 4 + K), stored flat with the shape in meta.json), 2k for top-k (k probabilities, then k class indices stored as float32,
exact below 2^24), 1 for labels. A folder whose meta.json is unreadable, disagrees with the
request or whose files have the wrong size is rebuilt, never reused.

Crash safety: rows are committed in groups (``commit``: at most every ``commit_seconds``, and
on ``close``): the outputs are flushed to disk first, then their flags are set and flushed, so an
interrupted run never marks an unwritten row as filled; it loses at most the uncommitted rows,
which the next run recomputes. Flushing after every batch (``commit_seconds=0``) costs an
msync per batch (~5 ms for a 160 MB cache), often more than a small teacher's forward pass.
Concurrency: one writer per folder; two processes filling the same key at once may both compute
rows (harmless) or rebuild under each other (not).
Features are not cached: ``feature_paths`` is empty, so feature losses need a live teacher.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd import atomic
from edgekd.data import inputs as model_inputs
from edgekd.distill.losses import TeacherOutput
from edgekd.distill.teachers.live import LiveTeacher
from edgekd.errors import ConfigError
from edgekd.progress import progress

CACHE_FORMAT_VERSION = 1
KINDS = ("logits", "topk", "labels")


def find_cache(provider) -> CachedTeacher | None:
    """The CachedTeacher inside ``provider`` (it may sit under a BlackBoxTeacher), or None."""
    while provider is not None and not isinstance(provider, CachedTeacher):
        provider = getattr(provider, "inner", None)
    return provider


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex) over the class name and the state_dict's names, dtypes, shapes and bytes."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        if not isinstance(value, torch.Tensor):  # _extra_state and the like
            digest.update(repr(value).encode())
            continue
        t = value.detach().cpu()
        t = (t.dequantize() if t.is_quantized else t).contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def provider_fingerprint(provider) -> str:
    """The fingerprint of a teacher provider or PyTorch model, for cache keys.

    Raises:
        ConfigError: the provider has no ``fingerprint`` and wraps no PyTorch model.
    """
    if isinstance(provider, nn.Module):
        return model_fingerprint(provider)
    fingerprint = getattr(provider, "fingerprint", None)
    if fingerprint:
        return fingerprint
    if isinstance(getattr(provider, "model", None), nn.Module):  # LiveTeacher
        return model_fingerprint(provider.model)
    raise ConfigError(f"{type(provider).__name__} has no fingerprint to key a teacher cache; "
                      f"pass teacher_fingerprint= (e.g. the sha256 of the teacher's weights)")


class CachedTeacher:
    """Serves ``inner``'s outputs per (sample index, view) from a memmap; computes only misses.

    ``hits`` and ``misses`` count rows (samples) served from the cache and computed by ``inner``.
    """

    def __init__(self, inner, cache_dir: str | Path, *, dataset_fingerprint: str, num_samples: int,
                 views: int, teacher_fingerprint: str | None = None, augmentation: str | dict = "",
                 commit_seconds: float = 1.0):
        """Open (or prepare) the cache folder of this key under ``cache_dir``.

        Args:
            inner: the provider to cache (kind "logits", "topk" with an int ``k``, or "labels"),
                or a PyTorch model (wrapped as a LiveTeacher).
            cache_dir: parent folder; the cache lives in ``cache_dir/<key>/``.
            dataset_fingerprint: identifies the samples, e.g. ``DataSplits.fingerprint``.
            num_samples: dataset size; sample indices are in [0, num_samples).
            views: augmentation views per sample; views are in [0, views).
            teacher_fingerprint: identifies the teacher (default: ``provider_fingerprint(inner)``).
            augmentation: identifies what a view means, e.g. ``{"shift": 1, "seed": 0}`` for
                ``view_shift``: a different augmentation gives different inputs for the same
                (sample, view), so it must be part of the key.
            commit_seconds: how often written rows are made durable (0: after every batch).

        Raises:
            ConfigError: bad sizes, an unknown inner kind, a top-k provider without ``k``, or no
                way to fingerprint the teacher.
        """
        if isinstance(inner, nn.Module):
            inner = LiveTeacher(inner)
        kind = getattr(inner, "kind", None)
        if kind not in KINDS:
            raise ConfigError(f"cannot cache a provider of kind {kind!r}; expected one of {', '.join(KINDS)}")
        k = getattr(inner, "k", None) if kind == "topk" else None
        if kind == "topk" and (not isinstance(k, int) or k < 1):
            raise ConfigError(f"{type(inner).__name__} gives top-k outputs but no int attribute k; "
                              f"the cache needs k to size its rows")
        for name, value in (("num_samples", num_samples), ("views", views)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"teacher cache: {name} must be an int >= 1, got {value!r}")
        self.inner, self.kind, self.k = inner, kind, k
        self.num_samples, self.views = num_samples, views
        self.feature_paths: list[str] = []  # features are not cached
        fields = {
            "format": CACHE_FORMAT_VERSION, "dataset": str(dataset_fingerprint),
            "teacher": str(teacher_fingerprint or provider_fingerprint(inner)),
            "augmentation": augmentation, "kind": kind, "k": k, "views": views, "num_samples": num_samples,
        }
        try:
            text = json.dumps(fields, sort_keys=True)
        except TypeError as err:
            raise ConfigError(f"teacher cache: augmentation must be JSON data (str, numbers, lists, "
                              f"dicts), got {augmentation!r} ({err})") from None
        self.fields = json.loads(text)  # as meta.json will hold them (tuples become lists)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / self.key
        self.hits = self.misses = 0
        self._complete: set[int] = set()  # views whose every row is filled
        self.width: int | None = {"topk": 2 * k if k else None, "labels": 1}.get(kind)
        self.sample_shape: tuple[int, ...] | None = None  # a logits row's shape (width,) or e.g. (A, 4 + K)
        self.commit_seconds = commit_seconds
        self._outputs: np.memmap | None = None  # (views, num_samples, width)
        self._filled: np.memmap | None = None   # (views, num_samples) committed flags, on disk
        self._flags: np.ndarray | None = None   # (views, num_samples) flags of this process, in RAM
        self._pending: list[tuple[int, np.ndarray]] = []  # (view, samples) written, not committed
        self._committed_at = -math.inf
        self._open_existing()

    @property
    def fingerprint(self) -> str:
        """The teacher fingerprint: a cache returns exactly what its teacher would."""
        return self.fields["teacher"]

    @property
    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / total if total else 0.0}

    def filled_fraction(self) -> float:
        """Fraction of (view, sample) rows already in the cache."""
        if self._flags is None:
            self._open_existing()
        return float(self._flags.mean()) if self._flags is not None else 0.0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: torch.Tensor, view: int) -> tuple[TeacherOutput, dict]:
        if not 0 <= int(view) < self.views:
            raise ConfigError(f"teacher cache {self.path}: view {view} out of range; it holds "
                              f"{self.views} views (0..{self.views - 1})")
        idx = index.detach().cpu().long().numpy()  # (N,)
        bad = idx[(idx < 0) | (idx >= self.num_samples)]
        if len(bad):
            raise ConfigError(f"teacher cache {self.path}: sample index {int(bad[0])} out of range "
                              f"for {self.num_samples} samples")
        if len(idx) == 0:
            return self.inner(x, index, view)[0], {}
        if self._outputs is None:  # nothing written yet, or closed: map the folder if it is valid
            self._open_existing()
        if self._flags is None:
            missing = np.ones(len(idx), bool)
        elif view in self._complete:  # every row of this view is filled: no flag lookups
            missing = np.zeros(len(idx), bool)
        else:
            missing = self._flags[view, idx] == 0  # (N,)
            if not missing.any() and self._flags[view].all():
                self._complete.add(view)
        miss = np.flatnonzero(missing)
        if len(miss):
            sel = torch.from_numpy(miss).to(index.device)
            fresh, shape = self._encode(self.inner(model_inputs.take(x, sel), index[sel], view)[0])  # (M, width)
            if self._outputs is None or shape != self.sample_shape:
                # first write, or a teacher whose width changed under the same fingerprint: the
                # stored rows cannot be its outputs, so start over
                self._create(shape)
                if not missing.all():  # the rows this batch would have read are gone
                    return self(x, index, view)
            self._outputs[view, idx[miss]] = fresh
            self._flags[view, idx[miss]] = 1
            self._pending.append((view, idx[miss]))
            if time.monotonic() - self._committed_at >= self.commit_seconds:
                self.commit()
        if not len(miss):  # the common case once filled: one gather from the memory map
            self.hits += len(idx)
            return self._decode(torch.from_numpy(self._outputs[view, idx]).to(index.device)), {}
        rows = np.empty((len(idx), self.width), np.float32)  # (N, width)
        hit = np.flatnonzero(~missing)
        if len(hit):
            rows[hit] = self._outputs[view, idx[hit]]
        rows[miss] = fresh
        self.hits += len(hit)
        self.misses += len(miss)
        return self._decode(torch.from_numpy(rows).to(index.device)), {}

    def fill(self, x_all: torch.Tensor, views: int | None = None, augment_fn=None, *,
             batch_size: int = 256, desc: str = "teacher cache") -> dict[str, float]:
        """Compute every missing row of views 0..``views``-1 (default: all) ahead of training.

        Args:
            x_all: the whole dataset (num_samples, C, H, W), in index order.
            views: how many views to fill, from view 0.
            augment_fn: ``(x, index, view) -> x``, the augmentation training applies, e.g.
                ``lambda x, i, v: view_shift(x, i, v, shift, seed)``; None: views are identical.
            batch_size: samples per teacher call.

        Returns:
            ``stats`` after filling.
        """
        if model_inputs.num_samples(x_all) != self.num_samples:
            raise ConfigError(f"teacher cache: fill got {model_inputs.num_samples(x_all)} samples, the cache holds {self.num_samples}")
        views = self.views if views is None else min(views, self.views)
        chunks = math.ceil(self.num_samples / batch_size)
        with progress(total=views * chunks, desc=desc, unit="batch") as bar:
            for view in range(views):
                for start in range(0, self.num_samples, batch_size):
                    stop = min(start + batch_size, self.num_samples)
                    if self._flags is None or not self._flags[view, start:stop].all():
                        idx = torch.arange(start, stop)
                        x = model_inputs.take(x_all, idx)
                        self(augment_fn(x, idx, view) if augment_fn is not None else x, idx, view)
                    bar.update(1)
        self.commit()
        return self.stats

    def commit(self) -> None:
        """Make the rows written so far durable: flush their outputs, then set and flush their flags."""
        if self._pending:
            self._outputs.flush()  # outputs reach the disk before their flags do
            for view, samples in self._pending:
                self._filled[view, samples] = 1
            self._filled.flush()
            self._pending.clear()
        self._committed_at = time.monotonic()

    def close(self) -> None:
        """Commit and release the memmaps (reopened by the next call)."""
        if self._outputs is not None:
            self.commit()
        self._outputs = self._filled = self._flags = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: uncommitted rows are recomputed next time
            pass

    # -- storage ---------------------------------------------------------------------------

    def _files(self) -> tuple[Path, Path, Path]:
        return self.path / "meta.json", self.path / "outputs.f32", self.path / "filled.u8"

    def _open_existing(self) -> None:
        """Map a valid existing folder of this key; discard an invalid one."""
        meta_path, out_path, flag_path = self._files()
        if not self.path.exists():
            return
        try:
            meta = json.loads(meta_path.read_text())
            width = meta["width"]
            shape = tuple(meta["sample_shape"] if "sample_shape" in meta else [width])  # older caches: flat rows
            valid = (isinstance(meta, dict) and all(meta.get(f) == v for f, v in self.fields.items())
                     and isinstance(width, int) and width >= 1 and self.width in (None, width)
                     and int(np.prod(shape)) == width
                     and out_path.stat().st_size == self.views * self.num_samples * width * 4
                     and flag_path.stat().st_size == self.views * self.num_samples)
        except (OSError, ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            self._discard()
            return
        self.width, self.sample_shape = width, shape
        self._outputs = np.memmap(out_path, np.float32, "r+", shape=(self.views, self.num_samples, width))
        self._filled = np.memmap(flag_path, np.uint8, "r+", shape=(self.views, self.num_samples))
        self._flags = np.array(self._filled)

    def _discard(self) -> None:
        self._outputs = self._filled = self._flags = None
        self._complete = set()
        self._pending.clear()
        for path in self._files():  # meta.json first: a half-removed folder never looks valid
            path.unlink(missing_ok=True)

    def _create(self, sample_shape: tuple[int, ...]) -> None:
        """Start an empty cache of rows of ``sample_shape`` (stored flat); meta.json is written last."""
        self._discard()
        meta_path, out_path, flag_path = self._files()
        self.path.mkdir(parents=True, exist_ok=True)
        width = int(np.prod(sample_shape))
        self.width, self.sample_shape = width, tuple(sample_shape)
        self._outputs = np.memmap(out_path, np.float32, "w+", shape=(self.views, self.num_samples, width))
        self._filled = np.memmap(flag_path, np.uint8, "w+", shape=(self.views, self.num_samples))
        self._flags = np.zeros((self.views, self.num_samples), np.uint8)
        self._outputs.flush()
        self._filled.flush()
        atomic.write_text(meta_path, json.dumps({**self.fields, "width": width, "sample_shape": list(sample_shape),
                                                "key": self.key},
                                                indent=2, sort_keys=True) + "\n")

    # -- rows <-> TeacherOutput ------------------------------------------------------------

    def _encode(self, out: TeacherOutput) -> tuple[np.ndarray, tuple[int, ...]]:
        """Rows to store (M, width), and the shape of one sample's row before flattening."""
        if out.kind != self.kind:
            raise ConfigError(f"teacher cache: the provider said kind {self.kind!r} but returned {out.kind!r}")
        if self.kind == "logits":
            rows = out.logits.float()                                                  # (M, K) or (M, A, 4 + K)
        elif self.kind == "topk":
            if out.probs.shape[1] != self.k:
                raise ConfigError(f"teacher cache: the provider said k={self.k} but returned "
                                  f"{out.probs.shape[1]} probabilities")
            rows = torch.cat([out.probs.float(), out.indices.float()], 1)              # (M, 2k)
        else:
            rows = out.indices.float()[:, None]                                        # (M, 1)
        shape = tuple(rows.shape[1:])
        return np.ascontiguousarray(rows.detach().cpu().reshape(len(rows), -1).numpy(), dtype=np.float32), shape

    def _decode(self, rows: torch.Tensor) -> TeacherOutput:
        if self.kind == "logits":
            return TeacherOutput("logits", logits=rows.reshape(len(rows), *self.sample_shape))  # (N, K)
        if self.kind == "topk":
            return TeacherOutput("topk", probs=rows[:, :self.k].contiguous(),
                                 indices=rows[:, self.k:].long())                      # (N, k) each
        return TeacherOutput("labels", indices=rows[:, 0].long())                      # (N,)
