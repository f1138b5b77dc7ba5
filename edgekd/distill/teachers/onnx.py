"""A teacher given only as a deployed ONNX file, run in onnxruntime (logits only).

The file is opened through edgekd's runtime layer (``edgekd.runtime.api.open_session``), so
onnxruntime is imported when an ``OnnxTeacher`` is created, never when edgekd is imported. An
ONNX graph has no module paths to hook, so this teacher serves logit losses (kd, dkd, mse) and no
feature losses (``feature_paths`` is empty; the trainer refuses feature terms with it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from edgekd.distill.losses import TeacherOutput
from edgekd.errors import ConfigError, EdgeKDError, ModelLoadError, RuntimeBackendError
from edgekd.hashing import file_sha16
from edgekd.runtime.api import open_session, run_joined


class OnnxTeacher:
    """Runs the ONNX file at ``path`` on every batch and returns its logits as float32 tensors.

    A model exported with a fixed batch size B is run in chunks of B (the last chunk padded with
    zeros and the padding dropped), which is exact for any model that treats samples
    independently at inference, as classifiers in eval mode do.
    """

    kind = "logits"

    def __init__(self, path: str | Path, threads: int | None = None, task=None):
        """Open ``path`` in onnxruntime.

        Args:
            path: an ``.onnx`` file whose first input is (N, C, H, W) and first output (N, K) logits.
            threads: intra-op threads of the session (default: every CPU).
            task: the task whose ``join_outputs`` turns the file's outputs into what the task's
                ``forward`` gives (a detection head's boxes and scores, joined); None: the first output.

        Raises:
            ModelLoadError: the file is missing or onnxruntime cannot load it.
            ConfigError: onnxruntime is not installed, or the file is not ``.onnx``.
        """
        self.path = Path(path)
        self.task = task
        self.threads = threads or os.cpu_count() or 1
        self.feature_paths: list[str] = []
        self._session = open_session(self.path, "onnxruntime", self.threads)
        self._fingerprint = file_sha16(self.path)
        shape = self._session.input_shape
        self.batch_size = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None  # None: dynamic
        self.sample_shape = list(shape[1:])  # (C, H, W), None where dynamic

    @property
    def fingerprint(self) -> str:
        """sha256 of the file's bytes when it was opened (16 hex digits), for cache keys."""
        return self._fingerprint

    @torch.no_grad()
    def __call__(self, x, index: torch.Tensor, view: int) -> tuple[TeacherOutput, dict]:
        if isinstance(x, tuple):  # several inputs (token ids, mask): each keeps its own dtype
            arrays = tuple(np.ascontiguousarray(t.detach().cpu().numpy()) for t in x)
        else:
            expected = self.sample_shape
            if len(expected) != x.dim() - 1 or any(d is not None and d != s for d, s in zip(expected, x.shape[1:])):
                raise ConfigError(f"{self.path}: the teacher expects samples shaped "
                                  f"{tuple('?' if d is None else d for d in expected)}, got {tuple(x.shape[1:])}")
            arrays = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        logits = self.run(arrays)  # (N, K)
        return TeacherOutput("logits", logits=torch.from_numpy(logits).to(index.device)), {}

    def run(self, x) -> np.ndarray:
        """Logits of ``x`` (one array, or a tuple for several inputs), in chunks of the model's
        fixed batch size when it has one.  # (N, K)"""
        arrays = x if isinstance(x, tuple) else (x,)
        n = len(arrays[0])
        if self.batch_size is None or n == self.batch_size:
            return self._run(x)
        b, chunks = self.batch_size, []
        for start in range(0, n, b):
            chunk = tuple(a[start:start + b] for a in arrays)
            if len(chunk[0]) < b:
                chunk = tuple(np.concatenate([c, np.zeros((b - len(c), *c.shape[1:]), c.dtype)]) for c in chunk)
            chunks.append(self._run(chunk if isinstance(x, tuple) else chunk[0])[:min(b, n - start)])
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    def _run(self, x) -> np.ndarray:
        first_input = x[0] if isinstance(x, tuple) else x
        try:
            out = self._session.run(x) if self.task is None else run_joined(self._session, x, self.task)
        except EdgeKDError:
            raise
        except Exception as err:  # onnxruntime raises its own InvalidArgument/Fail/... types
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise RuntimeBackendError(f"{self.path}: onnxruntime failed on a batch shaped "
                                      f"{tuple(first_input.shape)} ({first})") from None
        if out.ndim < 2 or len(out) != len(first_input):
            raise ModelLoadError(f"{self.path}: expected the first output to be logits shaped "
                                 f"(N, classes) = ({len(first_input)}, K), got {tuple(out.shape)}")
        return np.ascontiguousarray(out, dtype=np.float32)


