"""Built-in convolutional classifiers: a teacher and students of several sizes.

All share one shape, ``ConvNet``: blocks of Conv3x3-BatchNorm-ReLU named ``features.block<i>``
(so distillation losses can name them by module path), max-pooling after chosen blocks, global
average pooling and a linear classifier. Sizes are chosen for small images such as the 8x8 digits.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from edgekd.models.factory import register_model


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=False),
        ))


class ConvNet(nn.Module):
    """Conv-BN-ReLU blocks, max-pool after the blocks in ``pool_after``, GAP, dropout, linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int],
                 pool_after: tuple[int, ...] = (1,), dropout: float = 0.0):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin = in_channels
        for i, width in enumerate(widths):
            layers[f"block{i}"] = ConvBNReLU(cin, width)
            if i in pool_after:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            cin = width
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        x = self.features(x)  # (N, C', H', W')
        x = self.flatten(self.pool(x))  # (N, C')
        return self.classifier(self.dropout(x))


@register_model("cnn-teacher")
def cnn_teacher(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.2) -> ConvNet:
    """Teacher: 64-64-128-128 channels, ~260k parameters (~1 MB in float32)."""
    return ConvNet(in_channels, num_classes, [64, 64, 128, 128], pool_after=(1,), dropout=dropout)


@register_model("cnn-teacher-half")
def cnn_teacher_half(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> ConvNet:
    """cnn-teacher with every other block (64-128 channels, ~75k parameters): a student that can
    start from the teacher's blocks 0 and 2 (``distill.init_from_teacher``)."""
    return ConvNet(in_channels, num_classes, [64, 128], pool_after=(0,), dropout=dropout)


@register_model("cnn-student-m")
def cnn_student_m(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> ConvNet:
    """Medium student: 16-32-64 channels, ~24k parameters."""
    return ConvNet(in_channels, num_classes, [16, 32, 64], pool_after=(1,), dropout=dropout)


@register_model("cnn-student-s")
def cnn_student_s(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> ConvNet:
    """Small student: 16-24-32 channels, ~12k parameters."""
    return ConvNet(in_channels, num_classes, [16, 24, 32], pool_after=(1,), dropout=dropout)


@register_model("cnn-student-xs")
def cnn_student_xs(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> ConvNet:
    """Extra-small student: 8-16 channels, ~1.4k parameters; clearly below the teacher alone."""
    return ConvNet(in_channels, num_classes, [8, 16], pool_after=(0,), dropout=dropout)
