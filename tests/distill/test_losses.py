"""Logit and label losses: golden values by hand, black-box adaptations, the registry contract."""

import math

import numpy as np
import pytest
import torch

from edgekd.distill.losses import LOSSES, Batch, TeacherOutput, list_losses


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _batch(s, t=None, labels=None, **kw):
    teacher = TeacherOutput("logits", logits=torch.as_tensor(t)) if t is not None else None
    return Batch(torch.as_tensor(s), None if labels is None else torch.as_tensor(labels), teacher, **kw)


def test_kd_golden_value_by_hand():
    s = np.array([1.0, 2.0, 0.5])
    t = np.array([2.0, 0.0, 1.0])
    T = 2.0
    p, q = _softmax(t / T), _softmax(s / T)
    expected = T * T * float(np.sum(p * (np.log(p) - np.log(q))))  # T^2 * KL(p_teacher || p_student)
    got = LOSSES.get("kd")(temperature=T)(_batch(s[None], t[None], [0]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.7811, abs=1e-4)  # the number itself, so a formula change shows


def test_kd_is_zero_when_student_matches_teacher_and_averages_over_batch():
    kd = LOSSES.get("kd")(temperature=4.0)
    z = torch.randn(8, 10)
    assert kd(_batch(z, z.clone())).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(1, 10), torch.randn(1, 10)
    one = kd(_batch(a, b))
    two = kd(_batch(torch.cat([a, a]), torch.cat([b, b])))
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_kd_from_topk_teacher_is_kl_over_k_plus_one_buckets():
    s = np.array([[1.0, 2.0, 0.5, -1.0]])
    probs, indices = np.array([[0.6, 0.3]]), np.array([[2, 0]])
    q = _softmax(s[0])
    p_b = np.array([0.6, 0.3, 0.1])
    q_b = np.array([q[2], q[0], 1 - q[2] - q[0]])
    expected = float(np.sum(p_b * np.log(p_b / q_b)))
    teacher = TeacherOutput("topk", probs=torch.tensor(probs), indices=torch.tensor(indices))
    got = LOSSES.get("kd")(temperature=4.0)(Batch(torch.tensor(s), None, teacher))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kd_from_label_only_teacher_is_cross_entropy_with_its_labels():
    s = torch.tensor([[0.0, math.log(3.0)]])
    teacher = TeacherOutput("labels", indices=torch.tensor([1]))
    got = LOSSES.get("kd")(temperature=4.0)(Batch(s, None, teacher))
    assert got.item() == pytest.approx(-math.log(3 / 4), rel=1e-6)


def test_dkd_golden_value_by_hand():
    s, t, y, T, alpha, beta = np.array([1.0, 2.0, 0.5]), np.array([2.0, 0.0, 1.0]), 0, 2.0, 1.0, 8.0
    ps, pt = _softmax(s / T), _softmax(t / T)
    bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
    tckd = T * T * np.sum(bt * np.log(bt / bs))
    ns, nt = _softmax(s[1:] / T), _softmax(t[1:] / T)  # non-target classes renormalised
    nckd = T * T * np.sum(nt * np.log(nt / ns))
    got = LOSSES.get("dkd")(temperature=T, alpha=alpha, beta=beta)(_batch(s[None], t[None], [y]))
    assert got.item() == pytest.approx(alpha * tckd + beta * nckd, rel=1e-5)


def test_dkd_uses_teacher_top1_as_target_for_unlabelled_samples():
    s, t = torch.randn(1, 5), torch.tensor([[0.0, 3.0, 1.0, 0.0, 0.0]])
    dkd = LOSSES.get("dkd")(temperature=2.0)
    assert dkd(_batch(s, t, [-1])).item() == pytest.approx(dkd(_batch(s, t, [1])).item(), rel=1e-6)


def test_mse_golden_value():
    got = LOSSES.get("mse")()(_batch([[1.0, 2.0]], [[0.0, 4.0]]))
    assert got.item() == pytest.approx((1 + 4) / 2)


def test_ce_golden_value_and_unlabelled_samples_ignored():
    ce = LOSSES.get("ce")()
    got = ce(_batch([[0.0, math.log(3.0)], [5.0, 0.0]], labels=[1, -1]))
    assert got.item() == pytest.approx(-math.log(3 / 4), rel=1e-6)
    assert ce(_batch([[5.0, 0.0]], labels=[-1])).item() == 0.0


LOGIT_LOSSES = [n for n in list_losses() if getattr(LOSSES.get(n), "needs", "") != "features"
                and "class_logits" in (getattr(LOSSES.get(n), "targets", None) or ("class_logits",))]
# detection-head losses have the same contract on head outputs: tests/distill/test_detection_losses.py


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_loss_contract(name):
    """Every logit/label loss: scalar, finite, differentiable w.r.t. the student only."""
    loss = LOSSES.get(name)(temperature=3.0)
    student = torch.randn(4, 10, requires_grad=True)
    teacher = torch.randn(4, 10)
    value = loss(_batch(student, teacher, [0, 1, 2, 3]))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_unknown_loss_suggests():
    from edgekd.distill import DistillConfig
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown loss 'kld'; did you mean 'kd'"):
        DistillConfig.from_dict({"loss": "kld"})


@pytest.mark.parametrize("name", ["kd", "dkd", "mse", "ce"])
def test_per_token_logits_read_the_class_axis_from_the_task(name):
    """(N, L, V) logits are N*L predictions over V classes: the same value as the flattened
    (N*L, V) batch, never a softmax over the sequence axis."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)  # (N, L, V)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[1, 3:] = -1  # unlabelled (padding) positions
    loss = LOSSES.get(name)(temperature=2.0) if name in ("kd", "dkd") else LOSSES.get(name)()
    per_token = loss(Batch(s, labels, TeacherOutput("logits", logits=t), class_dim=-1))
    flat = loss(Batch(s.reshape(10, 7), labels.reshape(10), TeacherOutput("logits", logits=t.reshape(10, 7))))
    assert per_token.item() == pytest.approx(flat.item(), rel=1e-6)
    if name in ("kd", "dkd"):  # the old softmax over dim=1 (the sequence) gives another number
        wrong = F_kl_over_sequence(s, t, 2.0)
        assert abs(per_token.item() - wrong) > 1e-3


def F_kl_over_sequence(s, t, T):
    import torch.nn.functional as F

    return (F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), log_target=True,
                     reduction="batchmean") * T * T).item()


def test_class_axis_one_of_a_channels_first_output():
    """A task whose logits are (N, K, L) (classes on axis 1) gets the same loss as (N, L, K)."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)  # (N, L, K)
    kd = LOSSES.get("kd")(temperature=3.0)
    last = kd(Batch(s, None, TeacherOutput("logits", logits=t), class_dim=-1))
    first = kd(Batch(s.transpose(1, 2), None, TeacherOutput("logits", logits=t.transpose(1, 2)), class_dim=1))
    assert last.item() == pytest.approx(first.item(), rel=1e-6)
