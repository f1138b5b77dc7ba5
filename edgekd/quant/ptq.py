"""Post-training quantization (PTQ): calibration only, no training.

The fast path, and the baseline QAT is measured against: the float model gets the same int8
simulation QAT uses (BatchNorm folded, per-channel symmetric int8 weights, per-tensor asymmetric
int8 activations where the fused kernels write them), its activation ranges are set by an
observer on a few calibration batches, and every scale is frozen. The result exports exactly
like a QAT model (QDQ ONNX, OpenVINO IR, TFLite).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    batches = progress(list(batches), desc=f"calibrate ({config.observer})", unit="batch", leave=False)
    return calibrated_copy(model, config.qat_config(simulation), batches)
