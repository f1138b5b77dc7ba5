import pytest
import torch
from torch import nn

from edgekd.errors import QuantizationError
from edgekd.models import create_model
from edgekd.quant import QATConfig, calibrate, prepare_qat
from edgekd.quant.fake_quant import ActivationQuantizer, QuantConv2d, QuantLinear, TiedQuantizer
from edgekd.quant.qat import activation_quantizers
from edgekd.distill.trainer import evaluate


def test_quantizers_sit_where_fused_kernels_write():
    gm = prepare_qat(create_model("cnn-student-s"), QATConfig())
    names = {n for n, _ in activation_quantizers(gm)}
    assert names == {"input_quant", "features.block0.relu_quant", "features.block1.relu_quant",
                     "features.block2.relu_quant", "classifier_quant"}
    # global average pooling keeps its input's grid (TFLite, onnxruntime): re-quantized with the
    # scale of the block before it, not a scale of its own
    tied = gm.get_submodule("dropout_quant")
    assert isinstance(tied, TiedQuantizer) and tied.source is gm.get_submodule("features.block2.relu_quant")
    # BN folded away, conv/linear swapped for weight-quantized versions, module paths kept
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    assert isinstance(gm.get_submodule("features.block0.conv"), QuantConv2d)
    assert isinstance(gm.get_submodule("classifier"), QuantLinear)
    code = gm.code
    # conv -> relu -> quant (no quantizer between conv and its ReLU), max-pool reuses the scale
    assert "features_block1_relu_quant = self.features.block1.relu_quant(features_block1_relu)" in code
    assert "self.features.block2.conv(features_pool1)" in code


def test_original_model_is_not_modified():
    model = create_model("cnn-student-s")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepare_qat(model, QATConfig())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_int8_simulation_close_to_float(digits, float_student, int8_student):
    float_acc = evaluate(float_student, digits.x_test, digits.y_test)
    int8_acc = evaluate(int8_student, digits.x_test, digits.y_test)
    assert float_acc > 0.9
    assert abs(float_acc - int8_acc) < 0.02


def test_calibration_needs_batches():
    gm = prepare_qat(create_model("cnn-student-xs"), QATConfig())
    with pytest.raises(QuantizationError, match="no batches"):
        calibrate(gm, [])


def test_freeze_makes_scales_constants(digits, int8_student):
    scales = {n: q.scale.clone() for n, q in activation_quantizers(int8_student)}
    int8_student.train()
    try:
        int8_student(digits.x_train[:64] * 10)  # a batch far outside the calibrated range
    finally:
        int8_student.eval()
    for name, q in activation_quantizers(int8_student):
        assert torch.equal(q.scale, scales[name]), name


def test_qat_trains_through_fake_quant(digits):
    gm = prepare_qat(create_model("cnn-student-xs"), QATConfig())
    calibrate(gm, [digits.x_train[:64]])
    gm.train()
    loss = nn.functional.cross_entropy(gm(digits.x_train[:64]), digits.y_train[:64])
    loss.backward()
    grads = [p.grad for p in gm.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_untraceable_model_gives_clear_error():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return x

    with pytest.raises(QuantizationError, match="cannot be traced for QAT"):
        prepare_qat(Dynamic(), QATConfig())


def test_model_without_layers_to_quantize():
    with pytest.raises(QuantizationError, match="no Conv2d or Linear"):
        prepare_qat(nn.Sequential(nn.ReLU()), QATConfig())


def test_qat_config_rejects_other_bit_widths():
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="weight_bits: expected 8 or 4"):
        QATConfig.from_dict({"weight_bits": 2})
    with pytest.raises(ConfigError, match="int4 weights are not supported by this target"):
        QATConfig.from_dict({"weight_bits": 4}).resolved()


def test_checkpoint_round_trip_of_int8_model(tmp_path, digits, int8_student):
    from edgekd.models import ModelSpec, load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "int8.pt", int8_student, ModelSpec(arch="cnn-student-s"),
                           in_channels=1, num_classes=10, input_shape=(1, 8, 8),
                           qat=QATConfig().to_dict())
    loaded, meta = load_checkpoint(path)
    assert meta["qat"] == QATConfig().to_dict()
    x = digits.x_test[:32]
    torch.testing.assert_close(loaded(x), int8_student(x))
    assert all(isinstance(m, ActivationQuantizer) and m.calibrated
               for _, m in activation_quantizers(loaded))
