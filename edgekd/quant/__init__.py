"""Int8 simulation that matches the deployed kernels: QAT, PTQ and their range observers."""

from edgekd.quant.observers import list_observers
from edgekd.quant.ptq import PTQConfig, post_training_quantize
from edgekd.quant.qat import QATConfig, calibrate, freeze, prepare_qat

__all__ = ["PTQConfig", "QATConfig", "calibrate", "freeze", "list_observers", "post_training_quantize",
           "prepare_qat"]
