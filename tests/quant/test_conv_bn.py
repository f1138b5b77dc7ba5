"""Conv+BN kept live during QAT (freeze_bn_epoch): the math of the fused module, the freeze, the fold."""

import copy

import pytest
import torch
from torch import nn

from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.quant.conv_bn import QuantConvBn2d, freeze_bn_stats
from edgekd.quant.fake_quant import QuantConv2d


def _trained_bn_student(digits):
    from edgekd.distill import TrainConfig, train_scratch
    from edgekd.models import create_model

    torch.manual_seed(1)
    model = create_model("cnn-student-s")
    train_scratch(model, digits, TrainConfig(epochs=2), augment_shift=0)
    return model.eval()


def test_in_eval_the_live_pair_computes_the_folded_conv(digits):
    float_model = _trained_bn_student(digits)
    batches = [digits.x_train[i:i + 64] for i in range(0, 256, 64)]
    live = prepare_qat(float_model, QATConfig(freeze_bn_epoch=2))
    folded = prepare_qat(float_model, QATConfig())
    assert isinstance(live.get_submodule("features.block0.conv"), QuantConvBn2d)
    assert type(folded.get_submodule("features.block0.conv")) is QuantConv2d
    for m in (live, folded):
        calibrate(m, batches)
    x = digits.x_val[:128]
    with torch.no_grad():
        a, b = live.eval()(x), folded.eval()(x)
    step = float(folded.get_submodule("classifier_quant").scale)
    # the same arithmetic up to float rounding, which can flip a code by one step in any layer
    assert (a - b).abs().max() <= step * 1.01 and ((a - b).abs() < 1e-5).float().mean() >= 0.9
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.99


def test_training_uses_batch_statistics_until_frozen(digits):
    model = prepare_qat(_trained_bn_student(digits), QATConfig(freeze_bn_epoch=1))
    calibrate(model, [digits.x_train[:64]])
    pair = model.get_submodule("features.block1.conv")
    before = pair.bn.running_mean.clone()
    model.train()
    model(digits.x_train[:64] * 3.0)  # other statistics than the float model saw
    assert not torch.equal(pair.bn.running_mean, before)  # live: running stats follow the batches
    assert freeze_bn_stats(model) == 3
    frozen = pair.bn.running_mean.clone()
    out_train = model(digits.x_train[:64] * 3.0)
    assert torch.equal(pair.bn.running_mean, frozen)  # frozen: no update...
    with torch.no_grad():
        assert torch.allclose(out_train, model.eval()(digits.x_train[:64] * 3.0), atol=1e-5)  # ...and eval math


def test_a_layer_kept_in_float_freezes_its_statistics_too(digits):
    from edgekd.quant.conv_bn import ConvBn2d

    model = prepare_qat(_trained_bn_student(digits),
                        QATConfig(freeze_bn_epoch=1, layers={"features.block1.conv": "float"}))
    calibrate(model, [digits.x_train[:64]])
    pair = model.get_submodule("features.block1.conv")
    assert type(pair) is ConvBn2d
    model.train()
    before = pair.bn.running_mean.clone()
    model(digits.x_train[:64] * 3.0)
    assert not torch.equal(pair.bn.running_mean, before)  # live
    assert freeze_bn_stats(model) == 3
    frozen = pair.bn.running_mean.clone()
    model(digits.x_train[:64] * 3.0)
    assert torch.equal(pair.bn.running_mean, frozen)  # frozen like the quantized pairs


def test_freeze_folds_so_the_export_matches_a_model_folded_before_qat(tmp_path, digits):
    from edgekd.export import export
    from edgekd.runtime import evaluate_session, open_session

    model = prepare_qat(_trained_bn_student(digits), QATConfig(freeze_bn_epoch=1))
    calibrate(model, [digits.x_train[i:i + 64] for i in range(0, 256, 64)])
    reference = model.eval()(digits.x_test).argmax(1).numpy()
    frozen = freeze(copy.deepcopy(model))
    assert not any(isinstance(m, (QuantConvBn2d, nn.BatchNorm2d)) for m in frozen.modules())
    assert (frozen(digits.x_test).argmax(1).numpy() == reference).mean() >= 0.99
    [art] = export(frozen, ["onnx"], tmp_path, "bn", digits.input_shape)
    result = evaluate_session(open_session(art.path), digits.x_test.numpy(), digits.y_test.numpy(),
                              frozen(digits.x_test).argmax(1).numpy())
    assert result.agreement >= 0.99


def test_freeze_bn_epoch_is_validated():
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="freeze_bn_epoch: must be >= 0, got -1"):
        QATConfig.from_dict({"freeze_bn_epoch": -1})


def test_pipeline_trains_with_live_bn_then_exports_the_folded_student(tmp_path):
    import edgekd.pipeline as pipeline
    from edgekd.models import load_checkpoint
    from tests.recipes import short_recipe

    recipe = short_recipe(epochs=3, qat_epochs=2)
    recipe.qat.freeze_bn_epoch = 1
    result = pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert result.report.entry("student-int8.onnx").agreement >= 0.99
    model, _ = load_checkpoint(tmp_path / "out/models/student-int8.pt")  # saved folded
    assert not any(isinstance(m, (QuantConvBn2d, nn.BatchNorm2d)) for m in model.modules())
    reference = result.report.entry("student-int8.pytorch").accuracy
    from edgekd.data import load_data

    data = load_data(recipe.data)
    assert (model(data.x_test).argmax(1) == data.y_test).float().mean().item() == pytest.approx(reference)
