"""Range observers by hand, PTQ through the API, the CLI and the pipeline."""

import pytest
import torch
from click.testing import CliRunner

from edgekd.quant.observers import OBSERVERS, fake_quantize, list_observers


def _observe(name, batches, **kw):
    obs = OBSERVERS.get(name)(**kw)
    for b in batches:
        obs.update(torch.as_tensor(b, dtype=torch.float32))
    return obs.range()


def test_minmax_and_moving_average_by_hand():
    batches = [[0.0, 1.0], [-2.0, 3.0]]
    assert _observe("minmax", batches) == (-2.0, 3.0)
    lo, hi = _observe("moving_average", batches, momentum=0.5)  # first batch, then halfway
    assert (lo, hi) == pytest.approx((-1.0, 2.0))


def test_percentile_clips_a_rare_outlier_minmax_keeps_it():
    values = torch.linspace(-1, 1, 10_001)
    values[0] = 100.0
    assert _observe("minmax", [values])[1] == 100.0
    lo, hi = _observe("percentile", [values], percentile=99.9)
    assert hi < 1.01 and lo == pytest.approx(-0.998, abs=0.01)


def test_mse_picks_the_range_with_least_quantization_error():
    torch.manual_seed(0)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((20_000,))
    lo, hi = _observe("mse", [laplace], max_samples=160_000)  # every value kept: exact comparison
    full = _observe("minmax", [laplace])
    err = lambda a, b: float(((fake_quantize(laplace, a, b) - laplace) ** 2).mean())  # noqa: E731
    assert hi < full[1] and err(lo, hi) < err(*full)
    for shrink in (0.5, 0.7, 0.9):  # no other clipping on the grid does better
        assert err(lo, hi) <= err(full[0] * shrink, full[1] * shrink)
    uniform = torch.rand(20_000) * 2 - 1
    assert _observe("mse", [uniform])[1] == pytest.approx(1.0, abs=0.05)


def test_every_observer_gives_a_range_containing_the_bulk():
    x = torch.randn(4, 1000)
    for name in list_observers():
        lo, hi = _observe(name, list(x))
        assert lo < -1 and hi > 1, name


def test_ptq_keeps_accuracy_and_uses_the_observer(digits, float_student):
    from edgekd.distill import evaluate
    from edgekd.quant import PTQConfig, post_training_quantize

    batches = [digits.x_train[i:i + 64] for i in range(0, 512, 64)]
    float_acc = evaluate(float_student, digits.x_test, digits.y_test)
    for observer in ("minmax", "mse"):
        int8 = post_training_quantize(float_student, batches, PTQConfig(observer=observer))
        assert evaluate(int8, digits.x_test, digits.y_test) >= float_acc - 0.03, observer


def test_ptq_command_writes_int8_checkpoint_and_export(tmp_path, float_student, digits):
    from edgekd.cli import main
    from edgekd.models import ModelSpec, load_checkpoint, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "student.pt", float_student, ModelSpec(arch="cnn-student-s"),
                           in_channels=1, num_classes=10, input_shape=(1, 8, 8))
    result = CliRunner().invoke(main, ["ptq", str(ckpt), "--observer", "percentile", "--batches", "4",
                                       "--out", str(tmp_path), "-f", "onnx"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "PTQ (percentile, 4 batches): test accuracy float" in result.output
    int8, meta = load_checkpoint(tmp_path / "student-ptq.pt")
    assert meta["qat"]["observer"] == "percentile" and (tmp_path / "student-ptq.onnx").is_file()
    bad = CliRunner().invoke(main, ["ptq", str(ckpt), "--observer", "minmx"])
    assert bad.exit_code == 2 and "'minmx' is not one of 'minmax'" in bad.output


def test_ptq_workflow_is_a_python_api(tmp_path, float_student, digits):
    """``edgekd ptq`` is ``quantize_checkpoint``: the same files and figures from Python."""
    from edgekd.data import DataConfig
    from edgekd.distill import evaluate
    from edgekd.errors import ConfigError
    from edgekd.models import ModelSpec, save_checkpoint
    from edgekd.quant import PTQConfig, quantize_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", float_student, ModelSpec(arch="cnn-student-s"),
                           in_channels=1, num_classes=10, input_shape=(1, 8, 8))
    run = quantize_checkpoint(ckpt, DataConfig(), PTQConfig(observer="minmax", calibration_batches=2),
                              formats=["onnx", "openvino"], out_dir=tmp_path)
    assert run.metric == "accuracy" and run.calibration_batches == 2
    assert run.float_quality == pytest.approx(evaluate(float_student, digits.x_test, digits.y_test))
    assert run.int8_quality >= run.float_quality - 0.03
    assert [a.format for a in run.artifacts] == ["onnx", "openvino"]
    assert list(run.validations) == [tmp_path / "m-ptq.onnx"] and run.validations[tmp_path / "m-ptq.onnx"].passed
    with pytest.raises(ConfigError, match="already an int8 checkpoint"):
        quantize_checkpoint(run.checkpoint, DataConfig(), PTQConfig())


def test_pipeline_ptq_stage_is_reported_next_to_qat(tmp_path):
    import edgekd.pipeline as pipeline
    from tests.recipes import short_recipe

    recipe = short_recipe(epochs=3, qat_epochs=1)
    recipe.ptq.enabled = True
    result = pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    names = [e.name for e in result.report.entries]
    assert {"student-ptq.pytorch", "student-ptq.onnx", "student-int8.onnx"} <= set(names)
    ptq = result.report.entry("student-ptq.onnx")
    assert ptq.agreement >= 0.99  # onnxruntime runs what the PTQ simulation computed


def test_lsq_learns_scales_and_exports_them_as_constants(tmp_path, digits, float_student):
    import copy

    from edgekd.distill import DistillConfig, TrainConfig, distill, evaluate
    from edgekd.export import export
    from edgekd.models import ModelSpec, load_checkpoint, save_checkpoint
    from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
    from edgekd.quant.fake_quant import ActivationQuantizer
    from edgekd.runtime import evaluate_session, open_session

    cfg = QATConfig(learnable_scales=True)
    q = prepare_qat(copy.deepcopy(float_student), cfg)
    calibrate(q, [digits.x_train[i:i + 64] for i in range(0, 512, 64)])
    acts = [m for m in q.modules() if isinstance(m, ActivationQuantizer)]
    before = [float(m.learned_scale.detach()) for m in acts]
    assert before == [float(m.scale) for m in acts]  # LSQ starts from calibration
    distill(q, float_student, digits, DistillConfig(), TrainConfig(epochs=2, lr=1e-3, weight_decay=0.0))
    freeze(q)
    after = [float(m.scale) for m in acts]
    assert any(abs(a - b) > 1e-6 for a, b in zip(after, before))  # the scales were trained
    assert evaluate(q, digits.x_test, digits.y_test) > 0.9
    [onnx] = export(q, ["onnx"], tmp_path, "lsq", digits.input_shape)
    reference = q(digits.x_test).argmax(1).numpy()
    result = evaluate_session(open_session(onnx.path), digits.x_test.numpy(), digits.y_test.numpy(), reference)
    assert result.agreement >= 0.99
    from edgekd.quant.validate import validate_onnx

    validation = validate_onnx(onnx.path, cfg.resolved().scheme)  # learned scales keep the codes
    assert validation.passed, validation.summary()  # within the rule's [-64, 64]
    ckpt = save_checkpoint(tmp_path / "lsq.pt", q, ModelSpec(arch="cnn-student-s"), in_channels=1,
                           num_classes=10, input_shape=(1, 8, 8), qat=cfg.to_dict())
    loaded, _ = load_checkpoint(ckpt)
    assert (loaded(digits.x_test).argmax(1).numpy() == reference).mean() == 1.0
