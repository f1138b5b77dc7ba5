"""Built-in detectors: anchor-free one-stage heads in the style of FCOS (Tian et al. 2019) and
YOLOv8, small enough for a microcontroller-class student, exported without NMS.

A backbone of stride-2 conv blocks gives feature maps at strides 4 and 8; each level has its own
head: a 3x3 conv block, then a 1x1 conv to 4 box distances and one to K class logits. Outputs are
decoded inside the model, as the exported head gives them (``edgekd.tasks.detection``):

    boxes  = [ax, ay, ax, ay] + sigmoid(d) * [-1, -1, 1, 1] * reach * stride   # (N, A, 4)
    scores = sigmoid(class logits)                                             # (N, A, K)

with (ax, ay) the anchor point's centre. A sigmoid (not exp) bounds every distance to ``reach``
strides, so the boxes' int8 range is known and every op has an int8 kernel on each target.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgekd.models.factory import register_model

STRIDES = (4, 8)
REACH = 4.0  # the longest box side a point reaches, in strides, on each side of it
PRIOR = 0.01  # initial class probability (RetinaNet's prior: background dominates)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class PointDetector(nn.Module):
    """Backbone at strides 4 and 8, one decoupled head per level; (boxes, scores) out."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (32, 32),
                 widths: tuple[int, int, int] = (16, 32, 64), depth: int = 1):
        super().__init__()
        h, w = image_size
        if h % STRIDES[-1] or w % STRIDES[-1]:
            raise ValueError(f"image size {h}x{w}: a detector with strides {STRIDES} needs sides divisible "
                             f"by {STRIDES[-1]}")
        c1, c2, c3 = widths
        extra = lambda c: [_block(c, c) for _ in range(depth)]  # noqa: E731
        self.stem = nn.Sequential(_block(in_channels, c1, 2), *extra(c1))          # stride 2
        self.stage4 = nn.Sequential(_block(c1, c2, 2), *extra(c2))                 # stride 4
        self.stage8 = nn.Sequential(_block(c2, c3, 2), *extra(c3))                 # stride 8
        self.heads = nn.ModuleList([_Head(c2, num_classes), _Head(c3, num_classes)])
        anchors, spread = [], []
        for s in STRIDES:
            ys, xs = torch.meshgrid(torch.arange(h // s), torch.arange(w // s), indexing="ij")
            centre = torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s)  # (g, 2)
            anchors.append(centre.repeat(1, 2))  # (g, 4): [ax, ay, ax, ay]
            spread.append(torch.tensor([-1.0, -1.0, 1.0, 1.0]).mul(REACH * s).expand(len(centre), 4))
        self.register_buffer("anchors", torch.cat(anchors))  # (A, 4)
        self.register_buffer("spread", torch.cat(spread).contiguous())  # (A, 4)
        self.strides, self.image_size = STRIDES, (h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not _tracing() and tuple(x.shape[-2:]) != self.image_size:
            h, w = self.image_size
            raise ValueError(f"this detector was built for {h}x{w} images (its anchor points are fixed) and got "
                             f"{x.shape[-2]}x{x.shape[-1]}; build it with image_size=(H, W) of the data")
        f4 = self.stage4(self.stem(x))  # (N, c2, H/4, W/4)
        f8 = self.stage8(f4)            # (N, c3, H/8, W/8)
        parts = [head(f) for head, f in zip(self.heads, (f4, f8))]
        box = torch.cat([b.flatten(2) for b, _ in parts], 2)  # (N, 4, A)
        cls = torch.cat([c.flatten(2) for _, c in parts], 2)  # (N, K, A)
        boxes = self.anchors + torch.sigmoid(box).transpose(1, 2) * self.spread  # (N, A, 4)
        scores = torch.sigmoid(cls).transpose(1, 2)  # (N, A, K)
        return boxes, scores


def _tracing() -> bool:
    """Under torch.fx, TorchScript or dynamo tracing shapes are symbols: the size check is Python's."""
    return (torch.fx._symbolic_trace.is_fx_symbolic_tracing() or torch.jit.is_tracing()
            or torch.compiler.is_compiling())


class _Head(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.box = nn.Sequential(_block(channels, channels), nn.Conv2d(channels, 4, 1))
        self.cls = nn.Sequential(_block(channels, channels), nn.Conv2d(channels, num_classes, 1))
        nn.init.constant_(self.cls[-1].bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.box(x), self.cls(x)  # (N, 4, h, w), (N, K, h, w)


@register_model("det-teacher")
def det_teacher(in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """Detector teacher (~850k parameters): widths 32/64/128, two conv blocks per stage."""
    return PointDetector(in_channels, num_classes, image_size, widths=(32, 64, 128), depth=2)


@register_model("det-student")
def det_student(in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """Detector student (~42k parameters): widths 8/16/32, one conv block per stage."""
    return PointDetector(in_channels, num_classes, image_size, widths=(8, 16, 32), depth=1)
