"""Distillation: losses (one registry), the training loop, and the distill/train_scratch API."""

from edgekd.distill.api import DistillConfig, distill, train_scratch
from edgekd.distill.losses import list_losses
from edgekd.distill.trainer import TrainConfig, TrainResult, evaluate, predict

__all__ = ["DistillConfig", "TrainConfig", "TrainResult", "distill", "evaluate", "list_losses",
           "predict", "train_scratch"]
