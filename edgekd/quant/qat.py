"""Quantization-aware training (QAT) by fake-quant modules inserted with torch.fx.

Why this route (of the two that reach real int8 kernels on torch 2.13): the model stays an
``nn.Module`` tree whose layers keep their module paths, so forward hooks (feature distillation)
work during QAT exactly as before it, and every scale is an explicit buffer that a target profile
can drive. ``torch.onnx.export`` turns ``torch.fake_quantize_*`` into QuantizeLinear /
DequantizeLinear with constant scales, which onnxruntime fuses into QLinearConv/QGemm and OpenVINO
runs as int8. (torchao PT2E also works, but its exported graph has no submodules for hooks.)

What is simulated, matching the fused int8 kernels of onnxruntime, OpenVINO and XNNPACK:
1. BatchNorm is folded into the preceding conv/linear before training (``fold.py``), so QAT
   trains exactly the weights that will be deployed.
2. Weights: symmetric int8 per output channel. Activations: asymmetric int8 per tensor.
3. Activations are quantized where a kernel writes them: after each conv/linear, or after the
   ReLU that follows it (runtimes fuse conv+ReLU), and at the input of each conv/linear whose
   input does not already come from a quantizer through scale-preserving ops (max-pool, flatten).
4. Observers are calibrated (min/max) on a few batches before fine-tuning, then follow a moving
   average during QAT until ``freeze_observers_epoch``; ``freeze`` makes every scale a constant.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

from edgekd.config import Config, FieldError, check_name
from edgekd.errors import QuantizationError
from edgekd.quant.fake_quant import (
    QUANT_LAYERS,
    QUANT_MODULES,
    ActivationQuantizer,
    PerChannelWeightQuantizer,
)
from edgekd.quant.fold import fold_batchnorm

FUSED_ACTIVATIONS_MODULES = (nn.ReLU, nn.ReLU6)
FUSED_ACTIVATION_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.relu6}
SCALE_PRESERVING_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Dropout, nn.Identity)
SCALE_PRESERVING_FUNCTIONS = {torch.flatten, nn.functional.max_pool2d, nn.functional.dropout,
                              torch.reshape, operator.getitem}
SCALE_PRESERVING_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}


@dataclass
class QATConfig(Config):
    """Quantization-aware fine-tuning settings.

    Attributes:
        enabled: run the QAT stage.
        epochs: fine-tuning epochs with the teacher guiding.
        lr: learning rate (smaller than float training: the weights are nearly right).
        calibration_batches: batches used to calibrate activation ranges before fine-tuning.
        observer: how calibration sets activation ranges: minmax, moving_average, percentile or
            mse (``edgekd.quant.observers``).
        percentile: the percentile of the ``percentile`` observer.
        freeze_observers_epoch: activation ranges follow the data until this epoch, then stay fixed.
        momentum: moving-average factor of activation ranges during QAT.
        learnable_scales: LSQ (Esser et al. 2020): weight and activation scales are parameters
            trained with the weights (initialised from calibration), not tracked by moving average.
        weight_bits: weight precision (int8 in this version).
        activation_bits: activation precision (int8 in this version).
    """

    enabled: bool = True
    epochs: int = 4
    lr: float = 2e-4
    calibration_batches: int = 8
    observer: str = "minmax"
    percentile: float = 99.99
    freeze_observers_epoch: int = 2
    momentum: float = 0.01
    learnable_scales: bool = False
    weight_bits: int = 8
    activation_bits: int = 8

    def __post_init__(self):
        for name in ("epochs", "calibration_batches", "freeze_observers_epoch"):
            if getattr(self, name) < (1 if name == "calibration_batches" else 0):
                raise FieldError(name, f"must be >= {1 if name == 'calibration_batches' else 0}, "
                                       f"got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise FieldError("lr", f"expected a learning rate in (0, 1), got {self.lr}")
        if not 0 < self.momentum <= 1:
            raise FieldError("momentum", f"expected a value in (0, 1], got {self.momentum}")
        from edgekd.quant.observers import OBSERVERS

        check_name(OBSERVERS, self.observer, "observer")
        if not 50 < self.percentile <= 100:
            raise FieldError("percentile", f"expected a percentile in (50, 100], got {self.percentile}")
        for name in ("weight_bits", "activation_bits"):
            if getattr(self, name) != 8:
                raise FieldError(name, f"only 8 bits is supported in this version, got {getattr(self, name)}")


def prepare_qat(model: nn.Module, config: QATConfig) -> fx.GraphModule:
    """Return a copy of ``model`` with BatchNorm folded and int8 fake-quantization inserted.

    Raises:
        QuantizationError: the model cannot be traced by torch.fx or has nothing to quantize.
    """
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types for untraceable Python
        raise QuantizationError(
            f"{type(model).__name__} cannot be traced by torch.fx for QAT "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); data-dependent control flow "
            f"in forward() is not supported: move it out of forward or into a leaf module") from None
    fold_batchnorm(gm)
    quantized = _swap_quant_modules(gm)
    if not quantized:
        raise QuantizationError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    momentum = config.momentum
    outputs = {_insert_output_quantizer(gm, node, momentum) for node in quantized}
    for node in quantized:
        _ensure_input_quantized(gm, node, outputs, momentum)
    gm.graph.lint()
    gm.recompile()
    if config.learnable_scales:
        for module in gm.modules():
            if isinstance(module, (ActivationQuantizer, PerChannelWeightQuantizer)):
                module.make_learnable()
    return gm


def activation_quantizers(model: nn.Module) -> list[tuple[str, ActivationQuantizer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ActivationQuantizer)]


@torch.no_grad()
def calibrate(model: fx.GraphModule, batches: Iterable[torch.Tensor], observer: str = "minmax",
              **observer_options) -> int:
    """Observe activation ranges on ``batches`` (float activations) with ``observer`` (see
    ``edgekd.quant.observers``: minmax, moving_average, percentile, mse); returns batches used.

    Raises:
        QuantizationError: no batch was given, or a quantizer never saw data.
    """
    from edgekd.quant.observers import OBSERVERS

    factory = OBSERVERS.get(observer)
    quantizers = activation_quantizers(model)
    was_training = model.training
    model.eval()
    for _, q in quantizers:
        q.observing, q.enabled = True, False
        q.observer = factory(**observer_options)
    count = 0
    for x in batches:
        model(x)
        count += 1
    for _, q in quantizers:
        seen = q.observer.range()
        if all(abs(v) != float("inf") for v in seen):
            q.set_range(*seen)
        q.observing, q.enabled, q.observer = False, True, None
    model.train(was_training)
    if count == 0:
        raise QuantizationError("calibration got no batches; give at least one batch of inputs")
    missing = [name for name, q in quantizers if not q.calibrated]
    if missing:
        raise QuantizationError(f"activation quantizer(s) {', '.join(missing)} saw no data during "
                                f"calibration (or only NaN/inf values)")
    return count


def observer_options(config: "QATConfig") -> dict:
    """Keyword options of ``config.observer`` for ``calibrate``."""
    return {"percentile": config.percentile} if config.observer == "percentile" else {}


def set_range_tracking(model: nn.Module, on: bool) -> None:
    """During QAT, let activation ranges follow the data (on) or keep them fixed (off)."""
    for _, q in activation_quantizers(model):
        q.tracking = on


def freeze(model: nn.Module) -> nn.Module:
    """Make every scale and zero point a constant (ready to export); returns the model in eval mode."""
    set_range_tracking(model, False)
    for module in model.modules():
        if isinstance(module, QUANT_LAYERS):
            module.weight_quant.freeze(module.weight)
        elif isinstance(module, ActivationQuantizer):
            module.freeze()
    return model.eval()


def rebuild_frozen(model: nn.Module, config: QATConfig) -> fx.GraphModule:
    """The structure of a frozen QAT model, to load a saved int8 checkpoint's state dict into."""
    gm = prepare_qat(model, config)
    for module in gm.modules():
        if isinstance(module, (PerChannelWeightQuantizer, ActivationQuantizer)):
            module.frozen = True
    return gm.eval()


def _swap_quant_modules(gm: fx.GraphModule) -> list[fx.Node]:
    modules = dict(gm.named_modules())
    nodes = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        cls = QUANT_MODULES.get(type(modules[node.target]))
        if cls is None:
            continue
        qmod = cls.from_float(modules[node.target])
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, qmod)
        nodes.append(node)
    return nodes


def _is_fused_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), FUSED_ACTIVATIONS_MODULES)
    return node.op == "call_function" and node.target in FUSED_ACTIVATION_FUNCTIONS


def _is_scale_preserving(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), SCALE_PRESERVING_MODULES)
    if node.op == "call_function":
        return node.target in SCALE_PRESERVING_FUNCTIONS
    return node.op == "call_method" and node.target in SCALE_PRESERVING_METHODS


def _insert_after(gm: fx.GraphModule, node: fx.Node, momentum: float) -> fx.Node:
    """Insert an ActivationQuantizer that all former users of ``node`` now read from."""
    if node.op == "call_module":
        parent, _, leaf = node.target.rpartition(".")
        name = f"{parent + '.' if parent else ''}{leaf}_quant"
    else:
        name = f"{node.name}_quant"
    gm.add_submodule(name, ActivationQuantizer(momentum))
    users = list(node.users)
    with gm.graph.inserting_after(node):
        qnode = gm.graph.call_module(name, (node,))
    for user in users:
        user.replace_input_with(node, qnode)
    return qnode


def _insert_output_quantizer(gm: fx.GraphModule, node: fx.Node, momentum: float) -> fx.Node:
    point = node
    while len(point.users) == 1 and _is_fused_activation(gm, next(iter(point.users))):
        point = next(iter(point.users))
    return _insert_after(gm, point, momentum)


def _ensure_input_quantized(gm: fx.GraphModule, node: fx.Node, quantized: set[fx.Node],
                            momentum: float) -> None:
    source = node.args[0]
    walk = source
    while isinstance(walk, fx.Node) and walk not in quantized and _is_scale_preserving(gm, walk):
        walk = walk.args[0]
    if walk in quantized:
        return
    if source.op == "placeholder":
        gm.add_submodule("input_quant", ActivationQuantizer(momentum))
        with gm.graph.inserting_after(source):
            qnode = gm.graph.call_module("input_quant", (source,))
        for user in [u for u in source.users if u is not qnode]:
            user.replace_input_with(source, qnode)
        quantized.add(qnode)
        return
    quantized.add(_insert_after(gm, source, momentum))


__all__ = ["QATConfig", "activation_quantizers", "calibrate", "freeze", "prepare_qat",
           "rebuild_frozen", "set_range_tracking"]
