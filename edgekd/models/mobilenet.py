"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
https://arxiv.org/abs/1801.04381).

The network of the paper's Table 2: a 3x3 stride-2 stem conv, seventeen inverted residual blocks
and a 1x1 conv to 1280 channels, then global average pooling, dropout and a linear classifier.
An inverted residual block with expansion t maps (N, c_in, H, W) to (N, c_out, H/s, W/s):

    expand   1x1 conv c_in -> t*c_in, BN, ReLU6        (left out when t = 1)
    filter   3x3 depthwise conv, stride s, BN, ReLU6
    project  1x1 conv t*c_in -> c_out, BN              (linear: no activation, sec. 3.2)
    y = x + block(x) when s = 1 and c_in = c_out, else y = block(x)

Channels scale with ``width_mult`` and are rounded to multiples of 8 as the reference
implementation does (``make_divisible``); as in the paper, the last conv keeps 1280 channels
for multipliers below one (sec. 5.1). Module paths and state-dict keys follow the layout of
torchvision's ``mobilenet_v2`` (``features.<i>``, ``classifier.1``), so its ImageNet weights
should load with ``load_state_dict``.
ReLU6 exports to ONNX as Clip(0, 6); every layer is traceable by torch.fx, as QAT needs.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.factory import register_model

# (t, c, n, s): expansion, output channels, repeats, stride of the first repeat (Table 2)
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``divisor``), never more than
    10% below ``v`` (tensorflow/models research/slim/nets/mobilenet/mobilenet.py)."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) - BatchNorm - ReLU6, 'same' padding; ``groups=channels`` for depthwise."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=False),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - linear projection (1x1), with a residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio  # (N, hidden, H, W) inside the block
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNReLU6(cin, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),  # linear bottleneck: no activation after it
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, cin, H, W) -> (N, cout, H/s, W/s)
        if self.use_res_connect:  # fixed at construction, so torch.fx traces one branch
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier; ``features.<i>`` are the stem (0), the blocks (1-17) and the last conv (18)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        if width_mult <= 0:
            raise ConfigError(f"MobileNetV2: width_mult must be > 0, got {width_mult}")
        cin = make_divisible(STEM_CHANNELS * width_mult)
        self.last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(ConvBNReLU6(cin, self.last_channels, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channels, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        """As the reference: He-normal (fan out) convs, unit BN, small-normal classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        x = self.features(x)  # (N, 1280, H/32, W/32)
        x = self.flatten(self.pool(x))  # (N, 1280)
        return self.classifier(x)


@register_model("mobilenetv2")
def mobilenetv2(in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 1.0: 3,504,872 parameters at 1000 classes, 300M multiply-adds at 224x224."""
    return MobileNetV2(num_classes, in_channels, width_mult=1.0, dropout=dropout)


@register_model("mobilenetv2-050")
def mobilenetv2_050(in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 0.5: half the channels (last conv still 1280), 1,968,680 parameters at 1000 classes."""
    return MobileNetV2(num_classes, in_channels, width_mult=0.5, dropout=dropout)
