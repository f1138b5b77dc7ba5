import pytest
import torch

from edgekd.quant.fake_quant import ActivationQuantizer, PerChannelWeightQuantizer


def test_activation_scale_and_zero_point_from_min_max_by_hand():
    q = ActivationQuantizer()
    q.observing = True
    q(torch.tensor([-1.0, 0.0, 3.0]))
    assert q.scale.item() == pytest.approx(4.0 / 255)
    # zero point: round(-128 - min / scale) = round(-128 + 63.75) = -64
    assert int(q.zero_point) == -64


def test_activation_range_always_contains_zero():
    q = ActivationQuantizer()
    q.observing = True
    q(torch.tensor([2.0, 6.0]))  # all positive (e.g. after ReLU)
    assert int(q.zero_point) == -128
    assert q.scale.item() == pytest.approx(6.0 / 255)
    q.observing = False
    assert q(torch.tensor([0.0])).item() == 0.0  # zero is exact


def test_activation_fake_quant_rounds_to_grid_and_clamps():
    q = ActivationQuantizer()
    q.observing = True
    q(torch.tensor([0.0, 2.55]))
    q.observing = False
    scale = q.scale.item()
    out = q(torch.tensor([0.004, 1.0, 10.0]))
    assert out[0].item() == pytest.approx(0.0, abs=1e-7)  # 0.4 steps rounds to 0
    assert out[1].item() == pytest.approx(round(1.0 / scale) * scale)
    assert out[2].item() == pytest.approx(255 * scale)  # clamped at the top of the range


def test_nan_batch_does_not_poison_range():
    q = ActivationQuantizer()
    q.observing = True
    q(torch.tensor([0.0, 1.0]))
    q(torch.tensor([float("nan"), 5.0]))
    assert q.max_val.item() == 1.0


def test_moving_average_tracking():
    q = ActivationQuantizer(momentum=0.5)
    q.observing = True
    q(torch.tensor([0.0, 2.0]))
    q.observing, q.tracking = False, True
    q(torch.tensor([0.0, 4.0]))
    assert q.max_val.item() == pytest.approx(3.0)


def test_per_channel_weight_scale_is_max_abs_over_127():
    w = torch.tensor([[1.27, -0.5], [0.1, -2.54]])
    wq = PerChannelWeightQuantizer(2)
    out = wq(w)
    torch.testing.assert_close(wq.scale, torch.tensor([0.01, 0.02]))
    assert (wq.zero_point == 0).all()
    q = torch.round(out / wq.scale[:, None])
    assert q.abs().max() <= 127  # narrow range: -128 never used
    torch.testing.assert_close(out, q * wq.scale[:, None])


def test_frozen_weight_scale_does_not_follow_weights():
    wq = PerChannelWeightQuantizer(1)
    wq.freeze(torch.tensor([[1.27]]))
    wq(torch.tensor([[100.0]]))
    assert wq.scale.item() == pytest.approx(0.01)


def test_straight_through_gradient_inside_range_zero_outside():
    q = ActivationQuantizer()
    q.observing = True
    q(torch.tensor([0.0, 1.0]))
    q.observing = False
    x = torch.tensor([0.5, 3.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]
