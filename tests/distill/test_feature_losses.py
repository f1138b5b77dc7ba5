"""edgekd.distill.losses.feature: golden values, adapters, shape errors and the registry contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.distill.losses import LOSSES, Batch, list_losses
from edgekd.errors import ConfigError, TrainingError

FEATURE_LOSSES = [n for n in list_losses() if getattr(LOSSES.get(n), "needs", "") == "features"]


def _loss(name: str, **options):
    return LOSSES.get(name)(student="features.block1", teacher="features.block2", **options)


def _value(loss, s, t) -> torch.Tensor:
    """prepare (no grad, as the trainer does) then forward on one batch."""
    s, t = torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(t, dtype=torch.float32)
    with torch.no_grad():
        loss.prepare(s, t)
    return loss(Batch(torch.zeros(len(s), 2), features={loss.student_path: s},
                      teacher_features={loss.teacher_path: t}))


# --- golden values ------------------------------------------------------------------------------

def test_fitnets_golden_value_is_plain_mse_when_shapes_agree():
    assert _value(_loss("fitnets"), [[1.0, 2.0]], [[0.0, 4.0]]).item() == pytest.approx((1 + 4) / 2)
    s, t = np.random.default_rng(0).normal(size=(2, 2, 3, 3, 3))
    assert _value(_loss("fitnets"), s, t).item() == pytest.approx(np.mean((s - t) ** 2), rel=1e-5)


def test_fitnets_pools_a_larger_student_map_to_the_teacher_grid():
    coarse = np.array([[[[1.0, -2.0], [3.0, 0.5]]]])                     # (1, 1, 2, 2)
    fine = coarse.repeat(2, axis=2).repeat(2, axis=3)                     # (1, 1, 4, 4), 2x2 blocks
    t = np.array([[[[0.0, 0.0], [1.0, 1.0]]]])
    assert _value(_loss("fitnets"), fine, t).item() == pytest.approx(np.mean((coarse - t) ** 2))
    upsampled = _value(_loss("fitnets"), coarse, fine)                    # smaller student: bilinear
    assert torch.isfinite(upsampled) and upsampled.item() > 0


def test_at_golden_value_by_hand():
    # student (1, 2, 2, 2): channel means of A^2 = [1, 2, 0, 0] -> Q_s = [1, 2, 0, 0] / sqrt(5)
    s = [[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [0.0, 0.0]]]]
    # teacher (1, 1, 2, 2): energy [0, 0, 0, 9] -> Q_t = [0, 0, 0, 1]; channel counts differ
    t = [[[[0.0, 0.0], [0.0, 3.0]]]]
    # (Q_s - Q_t)^2 = [1/5, 4/5, 0, 1] -> mean 0.5
    assert _value(_loss("at"), s, t).item() == pytest.approx(0.5, rel=1e-6)


def _at_numpy(a: np.ndarray, p: float = 2.0) -> np.ndarray:
    q = (np.abs(a) ** p).mean(1).reshape(len(a), -1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_at_matches_numpy_and_pools_the_larger_attention_map():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 4, 3, 3)), rng.normal(size=(3, 6, 3, 3))
    expected = np.mean((_at_numpy(s) - _at_numpy(t)) ** 2)
    assert _value(_loss("at"), s, t).item() == pytest.approx(expected, rel=1e-5)
    # a 6x6 student whose 2x2 blocks are constant has the energy of the 3x3 map, block for block
    fine = s.repeat(2, axis=2).repeat(2, axis=3)
    assert _value(_loss("at"), fine, t).item() == pytest.approx(expected, rel=1e-5)
    assert _value(_loss("at"), t, fine).item() == pytest.approx(expected, rel=1e-5)  # either side


def test_rkd_distance_golden_value_by_hand():
    # student: a 3-4-5 triangle, pair mean 4 -> d/mu = 0.75, 1, 1.25
    # teacher: 1-D points 0, 1, 2, pair mean 4/3 -> d/mu = 0.75, 1.5, 0.75
    # |differences| 0, 0.5, 0.5 -> huber 0, 0.125, 0.125; twice each over the 3 x 3 matrix
    s, t = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [[0.0], [1.0], [2.0]]
    assert _value(_loss("rkd_distance"), s, t).item() == pytest.approx(2 * 0.25 / 9, rel=1e-5)


def test_rkd_angle_golden_value_by_hand():
    # student: right isosceles triangle, cosines 0 (vertex 0), 1/sqrt2, 1/sqrt2
    # teacher: collinear 0, 1, 2, cosines 1, -1, 1
    # huber of |diff| = 1, 1 + 1/sqrt2, 1 - 1/sqrt2 -> 0.5, 0.5 + 1/sqrt2, (1 - 1/sqrt2)^2 / 2:
    # sum 1.75, twice (k, j order) over 27 triplets
    s, t = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
    assert _value(_loss("rkd_angle"), s, t).item() == pytest.approx(7 / 54, rel=1e-5)


def _huber(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)


def _rkd_numpy(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    def dist(e):
        d = np.linalg.norm(e[:, None] - e[None], axis=2)
        return d / (d.sum() / (len(e) * (len(e) - 1)))

    def angles(e):
        diff = e[None] - e[:, None]                                 # [i, j] = e_j - e_i
        norm = np.linalg.norm(diff, axis=2, keepdims=True)
        u = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 0)
        return np.einsum("ijd,ikd->ijk", u, u)

    return float(_huber(dist(s) - dist(t)).mean()), float(_huber(angles(s) - angles(t)).mean())


def test_rkd_matches_numpy_on_pooled_maps():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(5, 3, 2, 2)), rng.normal(size=(5, 7, 4, 4))
    expected_d, expected_a = _rkd_numpy(s.mean((2, 3)), t.mean((2, 3)))  # 4-D: global average pool
    assert _value(_loss("rkd_distance"), s, t).item() == pytest.approx(expected_d, rel=1e-4)
    assert _value(_loss("rkd_angle"), s, t).item() == pytest.approx(expected_a, rel=1e-4)


def test_rkd_is_invariant_to_scale_and_translation_of_the_embeddings():
    s = torch.randn(6, 5)
    for name in ("rkd_distance", "rkd_angle"):
        assert _value(_loss(name), s, 3 * s + 1).item() == pytest.approx(0.0, abs=1e-5)


def test_cosine_golden_values():
    assert _value(_loss("cosine"), [[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [2.0, 2.0]]).item() == \
        pytest.approx(0.5)  # cos 0 and 1
    # 4-D: one vector per position, over channels: (1, 0) vs (1, 0) and (0, 2) vs (2, 0)
    s = [[[[1.0, 0.0]], [[0.0, 2.0]]]]                                    # (1, 2, 1, 2)
    t = [[[[1.0, 2.0]], [[0.0, 0.0]]]]
    assert _value(_loss("cosine"), s, t).item() == pytest.approx(0.5)
    # 3-D: one vector per token: cos 1, -1, 1/sqrt2 -> mean of 0, 2, 1 - 1/sqrt2
    s = [[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]
    t = [[[3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]]
    expected = (0 + 2 + 1 - 1 / math.sqrt(2)) / 3
    assert _value(_loss("cosine"), s, t).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["fitnets", "at", "rkd_distance", "rkd_angle", "cosine"])
def test_zero_when_student_feature_equals_teacher_feature(name):
    x = torch.randn(4, 3, 5, 5)
    loss = _loss(name)
    assert _value(loss, x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss.adapter is None and not list(loss.parameters())


# --- adapters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fitnets", "cosine"])
@pytest.mark.parametrize("s_shape, t_shape, kind", [
    ((4, 3, 4, 4), (4, 8, 4, 4), nn.Conv2d),
    ((4, 3, 4, 4), (4, 8, 2, 2), nn.Conv2d),    # channels and spatial size differ
    ((4, 5), (4, 9), nn.Linear),
    ((4, 6, 5), (4, 6, 9), nn.Linear),          # tokens
])
def test_adapter_is_built_when_shapes_differ_trainable_and_learns(name, s_shape, t_shape, kind):
    torch.manual_seed(0)
    loss = _loss(name)
    student, teacher = torch.randn(s_shape), torch.randn(t_shape)
    with torch.no_grad():  # the trainer prepares without gradients
        loss.prepare(student, teacher)
    assert isinstance(loss.adapter, kind)
    params = list(loss.parameters())
    assert params and all(p.requires_grad for p in params)
    assert {id(p) for p in loss.adapter.parameters()} == {id(p) for p in params}

    student.requires_grad_(True)
    optimizer = torch.optim.SGD(params + [student], lr=0.5)
    batch = Batch(torch.zeros(4, 2), features={loss.student_path: student},
                  teacher_features={loss.teacher_path: teacher})
    first = loss(batch).item()
    for _ in range(20):
        optimizer.zero_grad()
        loss(batch).backward()
        optimizer.step()
    assert loss(batch).item() < 0.9 * first


def test_adapter_init_follows_the_global_seed_and_a_second_prepare_keeps_it():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    weights = []
    for _ in range(2):
        torch.manual_seed(123)
        loss = _loss("fitnets")
        loss.prepare(s, t)
        weights.append(loss.adapter.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    adapter = loss.adapter
    loss.prepare(s, t)
    assert loss.adapter is adapter


def test_forward_before_prepare_works_without_adapter_and_refuses_when_one_is_needed():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    batch = Batch(torch.zeros(2, 2), features={"features.block1": s},
                  teacher_features={"features.block2": t})
    assert torch.isfinite(_loss("at")(batch))
    fitnets = _loss("fitnets")
    with pytest.raises(TrainingError, match="call loss.prepare"):
        fitnets(batch)
    assert fitnets.adapter is None and not list(fitnets.parameters())


def test_hook_outputs_that_are_tuples_or_dicts_use_their_first_tensor():
    s, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    plain = _value(_loss("fitnets"), s, t).item()
    loss = _loss("fitnets")
    s_out, t_out = (s, torch.ones(1)), {"attention": None, "hidden": (t, torch.ones(1))}
    loss.prepare(s_out, t_out)
    batch = Batch(torch.zeros(3, 2), features={loss.student_path: s_out},
                  teacher_features={loss.teacher_path: t_out})
    assert loss(batch).item() == pytest.approx(plain)
    with pytest.raises(ConfigError, match="'features.block1' is a tuple holding no tensor"):
        _loss("fitnets").prepare((None, "x"), t)


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, s_shape, t_shape, why", [
    ("fitnets", (2, 8, 4, 4), (2, 16), "a 4-D feature cannot be mapped onto a 2-D one"),
    ("cosine", (2, 16), (2, 8, 4, 4), "a 2-D feature cannot be mapped onto a 4-D one"),
    ("cosine", (2, 5, 8), (2, 7, 8), "different lengths"),
    ("fitnets", (2, 3, 4, 4, 4), (2, 3, 4, 4, 4), "expected"),
    ("at", (2, 8, 4, 4), (2, 16), "needs two \\(N, C, H, W\\) feature maps"),
    ("at", (2, 8, 4, 4), (3, 8, 4, 4), "batch sizes differ"),
    ("rkd_distance", (2,), (2, 4), "one feature vector or map per sample"),
])
def test_irreconcilable_shapes_are_config_errors_naming_paths_and_shapes(name, s_shape, t_shape, why):
    with pytest.raises(ConfigError, match=why) as err:
        _loss(name).prepare(torch.zeros(s_shape), torch.zeros(t_shape))
    message = str(err.value)
    assert f"'{name}'" in message and "'features.block1'" in message and "'features.block2'" in message
    assert str(tuple(s_shape)) in message and str(tuple(t_shape)) in message


# --- the contract every registered feature loss keeps ----------------------------------------------

def test_the_feature_losses_are_registered():
    assert {"fitnets", "at", "rkd_distance", "rkd_angle", "cosine"} <= set(FEATURE_LOSSES)


TOKEN_ONLY = {"attention-kl", "value-relation"}  # MiniLM's relations between (N, L, D) projections


@pytest.mark.parametrize("name", FEATURE_LOSSES)
@pytest.mark.parametrize("s_shape, t_shape", [((4, 6, 4, 4), (4, 8, 2, 2)),
                                              ((4, 8, 3, 3), (4, 8, 3, 3))])
def test_feature_loss_contract(name, s_shape, t_shape):
    """Every feature loss: built from paths (+ temperature), prepare + forward give a finite scalar
    whose gradient reaches the student feature and never the teacher's. A loss reads the hooked
    outputs at its ``taps`` of each path (the path itself, or e.g. its query and key projections)."""
    cls = LOSSES.get(name)
    assert cls.needs == "features" and cls.kind == "feature"
    loss = cls(student="features.block1", teacher="features.block2", temperature=3.0)
    assert (loss.student_path, loss.teacher_path) == ("features.block1", "features.block2")
    if name in TOKEN_ONLY:
        s_shape, t_shape = (4, 5, 24), (4, 5, 36)
    torch.manual_seed(0)
    s_taps, t_taps = cls.taps("features.block1"), cls.taps("features.block2")
    student = {p: torch.randn(s_shape, requires_grad=True) for p in s_taps}
    teacher = {p: torch.randn(t_shape, requires_grad=True) for p in t_taps}
    with torch.no_grad():
        loss.prepare(loss.gather({p: v.detach() for p, v in student.items()}, "student"),
                     loss.gather({p: v.detach() for p, v in teacher.items()}, "teacher"))
    value = loss(Batch(torch.zeros(4, 2), features=student, teacher_features=teacher))
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    for tensor in student.values():
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0
    assert all(tensor.grad is None for tensor in teacher.values())
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())
