import pytest
import torch
from torch import fx, nn

from edgekd.quant.fold import fold_batchnorm


def _randomize_bn(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_preserves_eval_outputs_and_removes_bn(conv_bias):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=conv_bias), nn.BatchNorm2d(8), nn.ReLU()).eval()
    _randomize_bn(model)
    x = torch.randn(4, 3, 10, 10)
    expected = model(x)
    gm = fx.symbolic_trace(model)
    folded = fold_batchnorm(gm)
    assert folded == ["1"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_matches_formula_by_hand():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(2.0)
    bn = nn.BatchNorm2d(1).eval()
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0 - bn.eps)  # sqrt(var + eps) = 2
    bn.weight.data.fill_(3.0)
    bn.bias.data.fill_(0.5)
    gm = fx.symbolic_trace(nn.Sequential(conv, bn).eval())
    fold_batchnorm(gm)
    layer = gm.get_submodule("0")
    assert layer.weight.item() == pytest.approx(2.0 * 3.0 / 2.0)  # W * gamma / sigma
    assert layer.bias.item() == pytest.approx((0.0 - 1.0) * 3.0 / 2.0 + 0.5)  # (b - mu) gamma/sigma + beta


def test_bn_not_after_conv_is_left_alone():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    gm = fx.symbolic_trace(model)
    assert fold_batchnorm(gm) == []
    assert any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
