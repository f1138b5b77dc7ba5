"""Quantization schemes: rules, validation messages, the shipped target profiles, and QAT
simulating what a scheme says (golden scales checked by hand)."""

import pytest
import torch
from torch import nn

from edgekd.config import parse_yaml
from edgekd.errors import ConfigError
from edgekd.models import create_model
from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.quant.fake_quant import ActivationQuantizer, PerChannelWeightQuantizer, affine_qparams
from edgekd.quant.scheme import QuantScheme, TensorRule
from edgekd.targets import list_targets, load_target


def scheme(text: str) -> QuantScheme:
    data, source = parse_yaml(text, "s.yaml")
    return QuantScheme.from_dict(data, source)


def test_code_ranges():
    assert TensorRule(dtype="int8", narrow_range=True).qrange() == (-127, 127)
    assert TensorRule(dtype="int8").qrange() == (-128, 127)
    assert TensorRule(dtype="uint8", narrow_range=True).qrange() == (0, 255)  # unsigned: no narrowing
    assert TensorRule(dtype="int4").qrange() == (-8, 7)
    assert TensorRule(dtype="uint16").qrange() == (0, 65535)


def test_affine_qparams_golden():
    t = torch.tensor
    # asymmetric int8 over [-1, 3]: s = 4/255, z = round(-128 + 1/s) = -64
    s, z = affine_qparams(t(-1.0), t(3.0), -128, 127, False)
    assert s.item() == pytest.approx(4 / 255) and z.item() == -64
    # symmetric narrow int8 over [-2, 1]: s = 2/127, z = 0
    s, z = affine_qparams(t(-2.0), t(1.0), -127, 127, True)
    assert s.item() == pytest.approx(2 / 127) and z.item() == 0
    # symmetric uint8: zero point at the mid code 128, s covers max(2/128, 1/127)
    s, z = affine_qparams(t(-2.0), t(1.0), 0, 255, True)
    assert s.item() == pytest.approx(2 / 128) and z.item() == 128
    # a range that excludes 0 is widened to contain it: [0.5, 2] -> [0, 2] on uint8, z = 0
    s, z = affine_qparams(t(0.5), t(2.0), 0, 255, False)
    assert s.item() == pytest.approx(2 / 255) and z.item() == 0


@pytest.mark.parametrize("text, message", [
    ("ops: {convv: {}}", "s.yaml:1: ops.convv: unknown op kind; did you mean 'conv'?"),
    ("activations: {dtype: uint8}", "s.yaml:1: activations.dtype: uint8 activations are not supported "
                                    "on this target (its activation_dtypes: int8)"),
    ("activations: {per_channel: true}", "s.yaml:1: activations.per_channel: activations are quantized per tensor"),
    ("fuse: [gelu]", "s.yaml:1: fuse.0: cannot fuse 'gelu'; fusable: relu, relu6"),
    ("ops: {add: {weights: {dtype: int8}}}", "s.yaml:1: ops.add.weights: add has no weights"),
    ("weights: {dtype: int5}", "s.yaml:1: weights.dtype: expected one of"),
    ("ops: {softmax: {output_scale: 0.004}}", "s.yaml:1: ops.softmax.output_scale: give output_scale "
                                              "and output_zero_point together"),
    ("weight_dtypes: [int16]", "s.yaml:1: weight_dtypes.0: 'int16' is not a weight dtype"),
])
def test_bad_schemes_name_the_field(text, message):
    with pytest.raises(ConfigError) as err:
        scheme(text)
    assert str(err.value).startswith(message)


def test_every_shipped_profile_states_a_scheme():
    profiles = {t.name: t for t in list_targets()}
    assert {"x86-cpu", "x86-onnxruntime", "x86-openvino", "arm-litert-xnnpack", "qnn-htp",
            "intel-npu", "ethos-u55"} <= set(profiles)
    for profile in profiles.values():
        assert profile.quantization is not None, profile.name
    assert profiles["qnn-htp"].quantization.activations.dtype == "uint8"
    assert profiles["ethos-u55"].quantization.float_fallback is False
    assert profiles["ethos-u55"].connection == "none"


def test_int4_weights_only_where_the_target_lists_them():
    with pytest.raises(ConfigError, match="int4 weights are not supported by this target's runtime"):
        QATConfig(weight_bits=4, target="ethos-u55").resolved()


def quantizers(gm):
    return {n: m for n, m in gm.named_modules() if isinstance(m, (ActivationQuantizer, PerChannelWeightQuantizer))}


def test_qat_simulates_the_target_scheme(digits):
    """uint8 activations for onnxruntime's U8S8 kernels, int8 for x86-cpu; both with 7-bit weights
    (reduce_range), which x86 kernels without VNNI compute without saturating; x86-cpu-vnni keeps
    narrow-range 8-bit weights."""
    model = create_model("cnn-student-s")
    batches = [digits.x_train[:64]]
    ort = calibrate_frozen(model, QATConfig(target="x86-onnxruntime"), batches)
    generic = calibrate_frozen(model, QATConfig(target="x86-cpu"), batches)
    a, b = ort.get_submodule("features.block0.relu_quant"), generic.get_submodule("features.block0.relu_quant")
    assert (a.qmin, a.qmax) == (0, 255) and (b.qmin, b.qmax) == (-128, 127)
    assert int(a.zero_point) == 0 and int(b.zero_point) == -128  # ReLU output: lowest code is 0.0
    assert a.scale.item() == pytest.approx(b.scale.item(), rel=0.01)  # 256 codes over (nearly) one range
    wa = ort.get_submodule("features.block0.conv").weight_quant
    wb = generic.get_submodule("features.block0.conv").weight_quant
    assert (wa.qmin, wa.qmax) == (wb.qmin, wb.qmax) == (-64, 64)
    vnni = calibrate_frozen(model, QATConfig(target="x86-cpu-vnni"), batches)
    wc = vnni.get_submodule("features.block0.conv").weight_quant
    assert (wc.qmin, wc.qmax) == (-127, 127)


def test_fixed_softmax_output_scale(digits):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10), nn.Softmax(dim=1))
    gm = calibrate_frozen(model, QATConfig(target="arm-litert-xnnpack"), [digits.x_train[:64]])
    softmax_quant = next(m for n, m in gm.named_modules() if n.endswith("4_quant"))
    assert softmax_quant.scale.item() == 1 / 256 and int(softmax_quant.zero_point) == -128
    out = gm(digits.x_train[:8])
    codes = out / (1 / 256) - 128
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # every output on TFLite's grid


def calibrate_frozen(model, config, batches):
    gm = prepare_qat(model, config)
    calibrate(gm, batches)
    return freeze(gm)


def test_checkpoint_keeps_the_scheme(tmp_path, digits):
    """An int8 checkpoint rebuilds with its scheme, without the target file."""
    from edgekd.models import ModelSpec, load_checkpoint, save_checkpoint

    config = QATConfig(target="x86-onnxruntime").resolved()
    gm = calibrate_frozen(create_model("cnn-student-s"), config, [digits.x_train[:64]])
    path = save_checkpoint(tmp_path / "m.pt", gm, ModelSpec(arch="cnn-student-s"), in_channels=1,
                           num_classes=10, input_shape=(1, 8, 8), qat={**config.to_dict(), "target": "gone"})
    loaded, _ = load_checkpoint(path)
    assert loaded.get_submodule("input_quant").qmin == 0
    torch.testing.assert_close(loaded(digits.x_test[:16]), gm(digits.x_test[:16]))


def test_unreachable_target_refuses_to_benchmark():
    with pytest.raises(ConfigError, match="ethos-u55.*connection: none.*cannot benchmark"):
        load_target("ethos-u55").require_reachable("benchmark")
