"""The teacher a student learns from, assembled as a recipe's ``distill`` section describes it.

Layers, innermost first: the teacher itself (``LiveTeacher`` around a PyTorch model, with the
feature paths the objective taps; or ``OnnxTeacher`` for a deployed ``.onnx`` file), then the
cache (``CachedTeacher``, when ``distill.cache``: it keeps full logits, so one cache serves any
top-k or labels view of them), then the black box (``BlackBoxTeacher``, when ``teacher_output``
is ``topk`` or ``labels``), which reveals only what an API would.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.distill.api import DistillConfig
from edgekd.distill.teachers.live import LiveTeacher


def build_teacher_provider(config: DistillConfig, teacher, *, onnx_path: str | Path | None = None,
                           task=None, cache_dir: str | Path | None = None, dataset_fingerprint: str = "",
                           num_samples: int = 0, augmentation: dict | None = None) -> tuple[object, dict]:
    """The provider for ``teacher`` (a PyTorch model) or the ONNX file ``onnx_path``, plus the extra
    trainer arguments it needs (``cache_views``: fixed augmentation views when cached).

    Args:
        config: the distillation settings (objective, cache, teacher_output, top_k).
        teacher: the PyTorch teacher, or None with ``onnx_path``.
        onnx_path: a teacher given as an ONNX file, run in onnxruntime.
        task: the task (how the teacher is called on a batch).
        cache_dir: the folder of teacher-output caches (``<cache_dir>/teacher-outputs``).
        dataset_fingerprint, num_samples: what the cache is keyed by and sized for.
        augmentation: the augmentation the cached views are made with (shift, seed, rank).
    """
    feature_paths = [p for t in config.objective() if t.teacher for p in t.loss_class().taps(t.teacher)]
    if teacher is None:
        from edgekd.distill.teachers.onnx import OnnxTeacher

        provider = OnnxTeacher(onnx_path, threads=1, task=task)
    else:
        provider = LiveTeacher(teacher, feature_paths, forward=task.forward if task is not None else None)
    extra = {}
    if config.cache:
        from edgekd.distill.teachers.cache import CachedTeacher

        # without augmentation every view is the same input: one view, not cache_views teacher passes
        augments = bool((augmentation or {}).get("shift")) and getattr(task, "augments", True)
        views = config.cache_views if augments else 1
        provider = CachedTeacher(provider, Path(cache_dir) / "teacher-outputs",
                                 dataset_fingerprint=dataset_fingerprint, num_samples=num_samples,
                                 views=views, augmentation=dict(augmentation or {}))
        extra = {"cache_views": views}
    if config.teacher_output != "logits":
        from edgekd.distill.teachers.blackbox import BlackBoxTeacher

        provider = BlackBoxTeacher(provider, output=config.teacher_output, k=config.top_k)
    return provider, extra
