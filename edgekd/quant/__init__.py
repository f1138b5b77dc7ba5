"""Quantization-aware training with int8 simulation that matches the deployed kernels."""

from edgekd.quant.qat import QATConfig, calibrate, freeze, prepare_qat

__all__ = ["QATConfig", "calibrate", "freeze", "prepare_qat"]
