"""Post-training quantization (PTQ): calibration only, no training.

The fast path, and the baseline QAT is measured against: the float model gets the same int8
simulation QAT uses (BatchNorm folded, per-channel symmetric int8 weights, per-tensor asymmetric
int8 activations where the fused kernels write them), its activation ranges are set by an
observer on a few calibration batches, and every scale is frozen. The result exports exactly
like a QAT model (QDQ ONNX, OpenVINO IR, TFLite).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn

from edgekd.config import Config, FieldError, check_name
from edgekd.progress import progress
from edgekd.quant.qat import QATConfig, calibrated_copy


@dataclass
class PTQConfig(Config):
    """Post-training quantization settings.

    Attributes:
        enabled: run the PTQ stage (the KD student quantized without training), reported next
            to the QAT student.
        observer: minmax, moving_average, percentile or mse (``edgekd.quant.observers``).
        calibration_batches: training batches the observer sees.
        percentile: the percentile of the ``percentile`` observer.
    """

    enabled: bool = False
    observer: str = "mse"
    calibration_batches: int = 16
    percentile: float = 99.99

    def __post_init__(self):
        from edgekd.quant.observers import OBSERVERS

        check_name(OBSERVERS, self.observer, "observer")
        if self.calibration_batches < 1:
            raise FieldError("calibration_batches", f"must be >= 1, got {self.calibration_batches}")

    def qat_config(self, simulation: QATConfig | None = None) -> QATConfig:
        """The simulation settings, as a QATConfig (an int8 checkpoint is rebuilt from it):
        the target, scheme and bit widths of ``simulation`` (the recipe's QAT section), with
        this stage's observer."""
        base = simulation.to_dict() if simulation is not None else {}
        return QATConfig.from_dict({**base, "enabled": False, "calibration_batches": self.calibration_batches,
                                    "observer": self.observer, "percentile": self.percentile,
                                    "learnable_scales": False, "freeze_bn_epoch": 0})


def post_training_quantize(model: nn.Module, batches: Iterable[torch.Tensor],
                           config: PTQConfig, simulation: QATConfig | None = None) -> fx.GraphModule:
    """A frozen int8 copy of ``model`` calibrated on ``batches`` (the model is not changed).

    ``simulation``: a QATConfig naming the target (scheme) to simulate; default edgekd's int8.

    Raises:
        QuantizationError: the model cannot be traced, or calibration saw no data.
    """
    batches = list(batches)
    example = batches[0] if batches else None
    batches = progress(batches, desc=f"calibrate ({config.observer})", unit="batch", leave=False)
    return calibrated_copy(model, config.qat_config(simulation), batches, example)


@dataclass
class PTQRun:
    """What ``quantize_checkpoint`` wrote and measured."""

    checkpoint: Path  # the int8 checkpoint
    metric: str  # the task's quality metric (accuracy for classifiers)
    float_quality: float  # on the test split
    int8_quality: float
    calibration_batches: int
    artifacts: list = field(default_factory=list)  # edgekd.export.Artifact, in format order
    validations: dict = field(default_factory=dict)  # ONNX artifact path -> scheme validation


def quantize_checkpoint(model_path: str | Path, data_config, config: PTQConfig, *, target: str | None = None,
                        formats: Sequence[str] = ("onnx",), out_dir: str | Path = ".",
                        batch_size: int = 64) -> PTQRun:
    """Post-training quantization of an edgekd float checkpoint: calibrate, save, export, validate.

    The checkpoint's task (image classification for checkpoints that record none) loads
    ``data_config``; the int8 checkpoint ``<name>-ptq.pt`` and its exports go to ``out_dir``; each
    ONNX export is validated against the scheme of ``target`` (default: edgekd's int8 scheme).

    Raises:
        ConfigError: the checkpoint is already int8.
        DataError: the data does not fit the checkpoint's input.
        ModelLoadError, QuantizationError, ExportError: as the steps they come from.
    """
    from edgekd.distill.trainer import predict
    from edgekd.errors import ConfigError, DataError
    from edgekd.export import export
    from edgekd.models.factory import checkpoint_spec, load_checkpoint, save_checkpoint
    from edgekd.quant.validate import validate_onnx
    from edgekd.tasks import create_task
    from edgekd.tasks.spec import TensorSpec

    simulation = QATConfig(target=target).resolved()
    float_model, meta = load_checkpoint(model_path)
    if meta.get("qat"):
        raise ConfigError(f"{model_path} is already an int8 checkpoint; give a float one")
    recorded = meta.get("task") or {}
    task = create_task(recorded.get("name", "image-classification"))
    data = task.load_data(data_config)
    if meta.get("input_shape") and tuple(data.input_shape) != tuple(meta["input_shape"]):
        raise DataError(f"{data_config.source}: samples of shape {tuple(data.input_shape)} do not fit {model_path}, "
                        f"trained on {tuple(meta['input_shape'])} (C, H, W); calibrate on data like the "
                        f"training data")
    calibration = data.calibration_batches(batch_size, config.calibration_batches)
    int8 = post_training_quantize(float_model, calibration, config, simulation)
    name = f"{Path(model_path).stem}-ptq"
    spec, args = checkpoint_spec(meta)
    path = save_checkpoint(Path(out_dir) / f"{name}.pt", int8, spec, model_args=args, task=meta.get("task"),
                           input_shape=meta.get("input_shape"), qat=config.qat_config(simulation).to_dict(),
                           extra={"ptq": config.to_dict()})

    def quality(model: nn.Module) -> float:
        logits = predict(model, data.x_test, task=task).numpy()
        return task.metrics(logits, data.y_test.numpy())[task.quality_metric]

    inputs = ([TensorSpec.from_dict(s) for s in recorded["inputs"]] if recorded.get("inputs")
              else task.input_spec(data))
    outputs = [TensorSpec.from_dict(s) for s in recorded.get("outputs", [])] or task.output_spec(data)
    artifacts = export(int8, list(formats), out_dir, name, inputs, outputs=outputs)
    validations = {a.path: validate_onnx(a.path, simulation.scheme) for a in artifacts if a.format == "onnx"}
    return PTQRun(path, task.quality_metric, quality(float_model), quality(int8), len(calibration), artifacts,
                  validations)
