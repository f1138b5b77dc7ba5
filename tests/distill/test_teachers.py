"""Teacher providers: ONNX teacher vs PyTorch, black-box outputs, and the memory-mapped cache."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from edgekd.distill.losses import LOSSES, Batch
from edgekd.distill.teachers import (
    BlackBoxTeacher,
    CachedTeacher,
    LiveTeacher,
    OnnxTeacher,
    model_fingerprint,
)
from edgekd.errors import ConfigError, ModelLoadError
from edgekd.export.onnx import export_onnx
from edgekd.models import create_model

N = 12  # samples in the toy dataset


def _model(seed=0):
    torch.manual_seed(seed)
    model = create_model("cnn-student-xs")
    for m in model.modules():  # non-trivial BN statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def model():
    return _model()


@pytest.fixture
def x():
    return torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def onnx_path(tmp_path, model):
    return export_onnx(model, tmp_path / "teacher.onnx", (1, 8, 8))


class Counting:
    """A provider that records which samples it was asked for."""

    def __init__(self, inner):
        self.inner, self.kind, self.k = inner, inner.kind, getattr(inner, "k", None)
        self.feature_paths, self.calls = [], []

    def __call__(self, x, index, view):
        self.calls.append((index.tolist(), view))
        return self.inner(x, index, view)

    def asked(self):
        return sorted(i for idx, _ in self.calls for i in idx)


def _cache(inner, tmp_path, *, dataset="data-a", teacher="teacher-a", views=3, **kw):
    return CachedTeacher(inner, tmp_path / "cache", dataset_fingerprint=dataset, num_samples=N,
                         views=views, teacher_fingerprint=teacher, **kw)


IDX = torch.arange(N)


# -- OnnxTeacher -------------------------------------------------------------------------------

def test_onnx_teacher_matches_pytorch(model, x, onnx_path):
    teacher = OnnxTeacher(onnx_path, threads=1)
    out, feats = teacher(x, IDX, 0)
    assert teacher.kind == "logits" and teacher.feature_paths == [] and feats == {}
    assert out.logits.dtype == torch.float32 and out.logits.shape == (N, 10)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-5)


def test_onnx_teacher_fixed_batch_runs_in_chunks(model, x, onnx_path, tmp_path):
    graph = onnx.load(str(onnx_path))
    for value in (graph.graph.input[0], graph.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 5  # N=12: chunks of 5, 5, 2 (+3 padding)
    fixed = tmp_path / "fixed.onnx"
    onnx.save(graph, str(fixed))
    teacher = OnnxTeacher(fixed, threads=1)
    assert teacher.batch_size == 5
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(teacher(x, IDX, 0)[0].logits, expected, rtol=1e-4, atol=1e-5)


def test_onnx_fingerprint_follows_the_file(onnx_path):
    first = OnnxTeacher(onnx_path, threads=1).fingerprint
    assert first == hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    assert OnnxTeacher(onnx_path, threads=1).fingerprint == first
    export_onnx(_model(seed=1), onnx_path, (1, 8, 8))
    assert OnnxTeacher(onnx_path, threads=1).fingerprint != first


def test_onnx_teacher_bad_files_raise_model_load_error(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match="nope.onnx"):
        OnnxTeacher(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(ModelLoadError, match="corrupt.onnx"):
        OnnxTeacher(corrupt)


def test_onnx_teacher_wrong_input_shape_is_clear(onnx_path):
    with pytest.raises(ConfigError, match=r"expects samples shaped \(1, 8, 8\), got \(3, 8, 8\)"):
        OnnxTeacher(onnx_path, threads=1)(torch.zeros(2, 3, 8, 8), torch.arange(2), 0)


def test_importing_teachers_does_not_import_onnxruntime():
    code = "import sys, edgekd, edgekd.distill.teachers; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- BlackBoxTeacher ---------------------------------------------------------------------------

def test_blackbox_topk_reveals_only_sorted_softmax_topk(model, x):
    live = LiveTeacher(model, ["features.block0"])
    teacher = BlackBoxTeacher(live, "topk", k=3)
    out, feats = teacher(x, IDX, 0)
    assert teacher.kind == out.kind == "topk" and teacher.feature_paths == [] and feats == {}
    assert out.logits is None and out.probs.shape == (N, 3) and out.indices.shape == (N, 3)
    assert (out.probs.sum(1) <= 1 + 1e-6).all()
    assert (out.probs[:, :-1] >= out.probs[:, 1:]).all()  # descending
    with torch.no_grad():
        expected = F.softmax(model(x), dim=1).topk(3, dim=1)
    assert torch.equal(out.indices, expected.indices)
    torch.testing.assert_close(out.probs, expected.values)


def test_blackbox_labels_are_the_argmax(model, x):
    out, _ = BlackBoxTeacher(model, "labels")(x, IDX, 0)  # a plain model is wrapped as LiveTeacher
    with torch.no_grad():
        assert torch.equal(out.indices, model(x).argmax(1))
    assert out.kind == "labels" and out.indices.shape == (N,) and out.probs is None


def test_blackbox_rejects_bad_settings(model):
    with pytest.raises(ConfigError, match="did you mean 'topk'"):
        BlackBoxTeacher(model, "top-k")
    with pytest.raises(ConfigError, match="k >= 1"):
        BlackBoxTeacher(model, "topk", k=0)
    with pytest.raises(ConfigError, match="gives 'labels'"):
        BlackBoxTeacher(BlackBoxTeacher(model, "labels"), "topk")
    with pytest.raises(ConfigError, match="k=11 is more than the teacher's 10 classes"):
        BlackBoxTeacher(model, "topk", k=11)(torch.zeros(1, 1, 8, 8), torch.arange(1), 0)


def test_blackbox_fingerprint_names_what_is_revealed(model, onnx_path):
    onnx_teacher = OnnxTeacher(onnx_path, threads=1)
    fps = {BlackBoxTeacher(onnx_teacher, "topk", k=3).fingerprint,
           BlackBoxTeacher(onnx_teacher, "topk", k=5).fingerprint,
           BlackBoxTeacher(onnx_teacher, "labels").fingerprint}
    assert len(fps) == 3 and all(fp.startswith(onnx_teacher.fingerprint) for fp in fps)
    assert BlackBoxTeacher(model, "labels").fingerprint == f"{model_fingerprint(model)}-labels"


# -- model_fingerprint -------------------------------------------------------------------------

def test_model_fingerprint_changes_with_any_weight(model):
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(_model()) and len(fp) == 16
    with torch.no_grad():
        model.features.block0.bn.running_var[0] += 1e-3  # a buffer counts too
    assert model_fingerprint(model) != fp


# -- CachedTeacher -----------------------------------------------------------------------------

def test_cache_hit_skips_the_teacher_and_returns_identical_values(model, x, tmp_path):
    inner = Counting(LiveTeacher(model))
    cache = _cache(inner, tmp_path)
    first, feats = cache(x, IDX, 0)
    assert feats == {} and cache.feature_paths == [] and cache.stats["misses"] == N
    with torch.no_grad():
        torch.testing.assert_close(first.logits, model(x), rtol=0, atol=0)
    again, _ = cache(x[[3, 1]], IDX[[3, 1]], 0)
    assert len(inner.calls) == 1 and cache.hits == 2
    assert torch.equal(again.logits, first.logits[[3, 1]])


def test_cache_different_view_is_a_miss(model, x, tmp_path):
    inner = Counting(LiveTeacher(model))
    cache = _cache(inner, tmp_path)
    cache(x, IDX, 0)
    cache(x, IDX, 1)
    assert inner.calls == [(IDX.tolist(), 0), (IDX.tolist(), 1)] and cache.hits == 0
    with pytest.raises(ConfigError, match="view 3 out of range"):
        cache(x, IDX, 3)
    with pytest.raises(ConfigError, match="sample index 12 out of range"):
        cache(x[:1], torch.tensor([N]), 0)


def test_cache_mixed_batch_computes_only_the_missing_samples(model, x, tmp_path):
    inner = Counting(LiveTeacher(model))
    cache = _cache(inner, tmp_path)
    cache(x[:5], IDX[:5], 0)
    out, _ = cache(x[2:9], IDX[2:9], 0)
    assert inner.calls[1] == ([5, 6, 7, 8], 0) and cache.hits == 3
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x[2:9]), rtol=0, atol=0)


def test_cache_key_changes_with_dataset_teacher_or_augmentation(model, x, tmp_path):
    base = _cache(LiveTeacher(model), tmp_path)
    base(x, IDX, 0)
    for changed in ({"dataset": "data-b"}, {"teacher": "teacher-b"}, {"augmentation": {"shift": 2}},
                    {"views": 4}):
        inner = Counting(LiveTeacher(model))
        other = _cache(inner, tmp_path, **changed)
        assert other.path != base.path
        other(x, IDX, 0)
        assert other.misses == N and len(inner.calls) == 1, changed
    assert len(list((tmp_path / "cache").iterdir())) == 5


def test_reopened_cache_reuses_its_rows(model, x, tmp_path):
    first = _cache(LiveTeacher(model), tmp_path)
    expected = first(x, IDX, 0)[0].logits
    first.close()
    inner = Counting(LiveTeacher(model))
    second = _cache(inner, tmp_path)
    assert second.path == first.path and second.filled_fraction() == pytest.approx(1 / 3)
    assert torch.equal(second(x, IDX, 0)[0].logits, expected)
    assert inner.calls == [] and second.hits == N


def test_partial_fill_then_reopen_computes_only_unfilled_rows(model, x, tmp_path):
    _cache(LiveTeacher(model), tmp_path)(x[:5], IDX[:5], 1)
    inner = Counting(LiveTeacher(model))
    reopened = _cache(inner, tmp_path)
    reopened(x, IDX, 1)
    assert inner.asked() == list(range(5, N)) and reopened.hits == 5


def test_rows_are_committed_in_groups_and_on_close(model, x, tmp_path):
    cache = _cache(LiveTeacher(model), tmp_path, commit_seconds=3600)
    cache(x[:4], IDX[:4], 0)  # the first write commits at once
    cache(x[4:8], IDX[4:8], 0)  # written, not yet committed
    cache(x[:8], IDX[:8], 0)
    assert cache.hits == 8
    on_disk = cache.path / "filled.u8"
    assert np.fromfile(on_disk, np.uint8)[:N].tolist() == [1] * 4 + [0] * 8  # a crash now: 4..7 recomputed
    cache.close()
    assert np.fromfile(on_disk, np.uint8)[:N].tolist() == [1] * 8 + [0] * 4


def test_interrupted_write_leaves_rows_unfilled(model, x, tmp_path, monkeypatch):
    """Flags are set after outputs: a crash between the two never marks a row as filled."""
    cache = _cache(LiveTeacher(model), tmp_path, commit_seconds=0)
    cache(x[:1], IDX[:1], 0)  # create the files
    filled = cache._filled

    class Crash(Exception):
        pass

    def crash():
        raise Crash

    monkeypatch.setattr(cache._outputs, "flush", crash)
    with pytest.raises(Crash):
        cache(x, IDX, 0)
    assert filled[0].tolist() == [1] + [0] * (N - 1)
    monkeypatch.undo()
    inner = Counting(LiveTeacher(model))
    assert _cache(inner, tmp_path)(x, IDX, 0) and inner.asked() == list(range(1, N))


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape", "wrong_teacher", "truncated", "no_meta"])
def test_damaged_or_mismatching_cache_is_rebuilt(model, x, tmp_path, damage):
    cache = _cache(LiveTeacher(model), tmp_path)
    good = cache(x, IDX, 0)[0].logits
    cache.close()
    meta_path = cache.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    if damage == "garbage":
        meta_path.write_text("{not json")
    elif damage == "wrong_shape":
        meta_path.write_text(json.dumps({**meta, "num_samples": N + 1}))
    elif damage == "wrong_teacher":
        meta_path.write_text(json.dumps({**meta, "teacher": "someone-else"}))
    elif damage == "truncated":
        (cache.path / "outputs.f32").write_bytes(b"\0" * 16)
    else:
        meta_path.unlink()
    inner = Counting(LiveTeacher(model))
    rebuilt = _cache(inner, tmp_path)
    assert rebuilt.filled_fraction() == 0.0
    assert torch.equal(rebuilt(x, IDX, 0)[0].logits, good)
    assert inner.asked() == list(range(N)) and rebuilt.hits == 0
    assert json.loads(meta_path.read_text())["num_samples"] == N


@pytest.mark.parametrize("output", ["topk", "labels"])
def test_cache_of_black_box_outputs(model, x, tmp_path, output):
    blackbox = BlackBoxTeacher(model, output, k=4)
    inner = Counting(blackbox)
    cache = _cache(inner, tmp_path)
    assert cache.kind == output and cache.width == (8 if output == "topk" else 1)
    first, _ = cache(x, IDX, 0)
    reopened = _cache(Counting(blackbox), tmp_path)
    again, _ = reopened(x, IDX, 0)
    direct, _ = blackbox(x, IDX, 0)
    assert len(inner.calls) == 1 and reopened.hits == N
    for out in (first, again):
        assert out.kind == output and torch.equal(out.indices, direct.indices)
        assert out.indices.dtype == torch.int64
        if output == "topk":
            assert torch.equal(out.probs, direct.probs)


def test_cache_default_teacher_fingerprint_is_the_model_weights(model, tmp_path):
    cache = CachedTeacher(model, tmp_path, dataset_fingerprint="d", num_samples=N, views=1)
    assert cache.fingerprint == model_fingerprint(model)
    with pytest.raises(ConfigError, match="no fingerprint"):
        CachedTeacher(Counting(LiveTeacher(model)), tmp_path, dataset_fingerprint="d", num_samples=N, views=1)


def test_fill_precomputes_every_view_with_its_augmentation(model, x, tmp_path):
    inner = Counting(LiveTeacher(model))
    cache = _cache(inner, tmp_path, views=2)

    def augment(xb, idx, view):
        return xb + view

    cache.fill(x, augment_fn=augment, batch_size=5)
    assert cache.filled_fraction() == 1.0 and cache.misses == 2 * N
    calls = len(inner.calls)
    cache.fill(x, augment_fn=augment, batch_size=5)  # nothing left to do
    assert len(inner.calls) == calls
    out, _ = cache(x + 1, IDX, 1)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x + 1), rtol=0, atol=0)


# -- every provider kind feeds the kd loss -----------------------------------------------------

@pytest.mark.parametrize("make", ["live", "onnx", "topk", "labels", "cached-logits", "cached-topk"])
def test_kd_loss_accepts_every_provider(model, x, onnx_path, tmp_path, make):
    provider = {
        "live": lambda: LiveTeacher(model),
        "onnx": lambda: OnnxTeacher(onnx_path, threads=1),
        "topk": lambda: BlackBoxTeacher(model, "topk", k=3),
        "labels": lambda: BlackBoxTeacher(model, "labels"),
        "cached-logits": lambda: _cache(model, tmp_path),
        "cached-topk": lambda: _cache(BlackBoxTeacher(model, "topk", k=3), tmp_path),
    }[make]()
    student = torch.randn(N, 10, requires_grad=True)
    teacher_out, _ = provider(x, IDX, 0)
    loss = LOSSES.get("kd")(temperature=2.0)(Batch(student, torch.full((N,), -1), teacher_out))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and student.grad.abs().sum() > 0


def test_trainer_serves_later_epochs_from_the_cache(digits, model, tmp_path):
    """With cache_views=2, epochs 1-2 fill the two views and epochs 3-4 are pure hits."""
    from edgekd.distill.trainer import Term, TrainConfig, train

    teacher = create_model("cnn-student-xs").eval()
    cache = CachedTeacher(teacher, tmp_path, dataset_fingerprint=digits.fingerprint,
                          num_samples=len(digits.x_train), views=2, augmentation={"shift": 1, "seed": 0})
    train(model, digits, TrainConfig(epochs=4), [Term("kd", 1.0, LOSSES.get("kd")())], teacher=cache,
          augment_shift=1, cache_views=2)
    assert cache.misses == cache.hits == 2 * len(digits.x_train)


def test_teacher_with_another_width_under_the_same_key_rebuilds(x, tmp_path):
    """A fingerprint that failed to tell two teachers apart: the first miss exposes it."""
    ten = create_model("cnn-student-xs", num_classes=10).eval()
    five = create_model("cnn-student-xs", num_classes=5).eval()
    _cache(ten, tmp_path)(x[:5], IDX[:5], 0)
    inner = Counting(LiveTeacher(five))
    out, _ = _cache(inner, tmp_path)(x[:9], IDX[:9], 0)
    assert out.logits.shape == (9, 5) and inner.calls == [([5, 6, 7, 8], 0), (list(range(9)), 0)]
    with torch.no_grad():
        torch.testing.assert_close(out.logits, five(x[:9]), rtol=0, atol=0)


def test_cache_keeps_outputs_of_more_axes_like_a_detection_head(x, tmp_path):
    """A detection head's joined outputs (N, A, 4 + K) are stored flat and come back in their shape,
    also after the cache is reopened (the shape is in meta.json)."""
    from edgekd.tasks import create_task

    task = create_task("object-detection")
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5 * 7))

    class Detector(torch.nn.Module):  # 5 anchor points, 3 classes: boxes (N, 5, 4), scores (N, 5, 3)
        def forward(self, batch):
            out = head(batch).reshape(-1, 5, 7)
            return out[..., :4], out[..., 4:]

    first = _cache(LiveTeacher(Detector(), forward=task.forward), tmp_path)
    expected = first(x, IDX, 0)[0].logits
    assert expected.shape == (N, 5, 7)
    first.close()
    inner = Counting(LiveTeacher(Detector(), forward=task.forward))
    second = _cache(inner, tmp_path)
    assert torch.equal(second(x, IDX, 0)[0].logits, expected) and inner.calls == []
    assert json.loads((second.path / "meta.json").read_text())["sample_shape"] == [5, 7]


def test_an_onnx_detection_teacher_gives_its_joined_head(tmp_path):
    """A detector given as an ONNX file has two outputs (boxes, scores): the teacher joins them as
    the task's forward does, so detection-kd reads the same (N, A, 4 + K) either way."""
    from edgekd.distill.teachers.onnx import OnnxTeacher
    from edgekd.export import export
    from edgekd.models import create_model
    from edgekd.tasks import create_task
    from edgekd.tasks.spec import TensorSpec

    task = create_task("object-detection")
    torch.manual_seed(0)
    model = create_model("det-student", image_size=(32, 32)).eval()
    specs = [TensorSpec("input", "float32", ("batch", 1, 32, 32))]
    outputs = [TensorSpec("boxes", "float32", ("batch", None, 4)), TensorSpec("scores", "float32", ("batch", None, 10))]
    [onnx_file] = export(model, ["onnx"], tmp_path, "det", specs, outputs=outputs)
    x = torch.rand(3, 1, 32, 32)
    got = OnnxTeacher(onnx_file.path, threads=1, task=task)(x, torch.arange(3), 0)[0].logits
    with torch.no_grad():
        want = task.forward(model, x)
    assert got.shape == (3, 80, 14)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
