"""Quantization-aware training (QAT) by fake-quant modules inserted with torch.fx.

Why this route (of the two that reach real int8 kernels on torch 2.13): the model stays an
``nn.Module`` tree whose layers keep their module paths, so forward hooks (feature distillation)
work during QAT exactly as before it, and every scale is an explicit buffer that a target profile
can drive. ``torch.onnx.export`` turns ``torch.fake_quantize_*`` into QuantizeLinear /
DequantizeLinear with constant scales, which onnxruntime fuses into QLinearConv/QGemm and OpenVINO
runs as int8. (torchao PT2E also works, but its exported graph has no submodules for hooks.)

What is simulated is the quantization scheme of the target the model will run on
(``edgekd.quant.scheme``, from the target profile's ``quantization:`` section; without one, the
int8 scheme of edgekd's CPU runtimes):
1. BatchNorm is folded into the preceding conv/linear before training (``fold.py``), so QAT
   trains exactly the weights that will be deployed.
2. Weights per the scheme's rule for the layer's op kind (conv, depthwise_conv, linear): by
   default symmetric int8 per output channel in [-127, 127]. Activations per the rule of the op
   that writes them: by default asymmetric int8 per tensor; uint8, int16 or symmetric where the
   target's kernels are; fixed output scales (softmax, sigmoid, tanh) where the target fixes them.
3. Activations are quantized where a kernel writes them: after each conv/linear, or after the
   activation the runtime fuses into it (``scheme.fuse``: relu, relu6), and at the input of each
   conv/linear whose input does not already come from a quantizer through scale-preserving ops
   (max-pool, flatten).
4. Observers are calibrated (min/max) on a few batches before fine-tuning, then follow a moving
   average during QAT until ``freeze_observers_epoch``; ``freeze`` makes every scale a constant.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Sequence
import fnmatch
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import fx, nn

from edgekd.config import Config, FieldError, check_name, parse_field
from edgekd.data import inputs as model_inputs
from edgekd.errors import QuantizationError, did_you_mean
from edgekd.quant.fake_quant import (
    QUANT_LAYERS,
    QUANT_MODULES,
    ActivationQuantizer,
    MaskQuantizer,
    PerChannelWeightQuantizer,
    TiedQuantizer,
)
from edgekd.quant.conv_bn import ConvBn2d, QuantConvBn2d, fold_conv_bn, fuse_conv_bn
from edgekd.quant.fold import fold_batchnorm
from edgekd.quant.attention import decompose_attention
from edgekd.quant.layer_norm import channel_affine, decompose_layer_norm, l2_normalize, rewrite_normalize
from edgekd.quant.normalize import normalize
from edgekd.quant.trace import TRACERS, trace
from edgekd.quant.scheme import RANGES, QuantScheme

# 4-bit weights are fake-quantized as 8-bit ops (the TorchScript ONNX exporter maps only 8-bit
# fake-quant to QuantizeLinear) with codes in the 4-bit range; the exporter then stores them as
# packed int4 (``edgekd.export.onnx.pack_4bit_weights``).
CONTAINER = {"int4": "int8", "uint4": "uint8"}

LAYER_SWAPS = {**QUANT_MODULES, ConvBn2d: QuantConvBn2d}  # float layer type -> its QAT module
ACTIVATION_MODULES = {"relu": (nn.ReLU,), "relu6": (nn.ReLU6,)}
ACTIVATION_FUNCTIONS = {"relu": {torch.relu, nn.functional.relu}, "relu6": {nn.functional.relu6}}
FIXED_OUTPUT_MODULES = {"softmax": (nn.Softmax,), "sigmoid": (nn.Sigmoid,), "tanh": (nn.Tanh,)}
FIXED_OUTPUT_FUNCTIONS = {"softmax": {torch.softmax, nn.functional.softmax},
                          "sigmoid": {torch.sigmoid, nn.functional.sigmoid}, "tanh": {torch.tanh},
                          "l2_normalize": {l2_normalize}}
ADD_FUNCTIONS = {operator.add, torch.add}
SCALE_PRESERVING_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Dropout, nn.Identity)
SCALE_PRESERVING_FUNCTIONS = {torch.flatten, nn.functional.max_pool2d, nn.functional.dropout,
                              torch.reshape, operator.getitem, torch.chunk, torch.split, torch.unbind,
                              torch.transpose, torch.permute}
SCALE_PRESERVING_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "chunk",
                            "split", "unbind", "transpose", "permute", "expand", "expand_as", "repeat", "clone",
                            "to", "type_as", "float", "reshape_as", "view_as"}  # (``to``/``float`` of a float tensor: no change)
AVG_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AvgPool1d)
AVG_POOL_FUNCTIONS = {nn.functional.adaptive_avg_pool2d, nn.functional.avg_pool2d}


LAYER_PRECISIONS = ("float", "int8", "int4")


@dataclass
class MixedPrecisionConfig(Config):
    """Automatic mixed precision: keep the layers whose quantization hurts most at a higher
    precision until the quantized model is within ``max_accuracy_drop`` of the float model.

    Attributes:
        enabled: run the sensitivity pass before QAT/PTQ.
        max_accuracy_drop: allowed top-1 drop of the calibrated (PTQ) model vs the float model
            on the validation split, a fraction or a percentage ("0.5%").
        higher: the precision sensitive layers get: ``float``, or ``int8`` when the base
            precision is int4 (W4A8 with int8 where it matters).
    """

    enabled: bool = False
    max_accuracy_drop: float | str = 0.005
    higher: Literal["float", "int8"] = "float"

    def __post_init__(self):
        from edgekd.units import parse_fraction

        self.max_accuracy_drop = parse_field("max_accuracy_drop", parse_fraction, self.max_accuracy_drop)
        if not 0 <= self.max_accuracy_drop < 1:
            raise FieldError("max_accuracy_drop", f"expected a fraction in [0, 1), got {self.max_accuracy_drop}")


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
        freeze_bn_epoch: 0 folds BatchNorm into the convolutions before QAT; N > 0 keeps each
            conv+BN pair live for the first N epochs (batch statistics, running ones updated,
            weights folded and fake-quantized as deployed; ``edgekd.quant.conv_bn``), then
            freezes the statistics. Either way the exported model is the folded conv.
        momentum: moving-average factor of activation ranges during QAT.
        learnable_scales: LSQ (Esser et al. 2020): weight and activation scales are parameters
            trained with the weights (initialised from calibration), not tracked by moving average.
        weight_bits: 8, or 4 for int4 weights (W4A8) where the target's scheme lists int4.
        activation_bits: activation precision (8; 16-bit activations come from a target whose
            scheme states them, e.g. QNN HTP's uint16).
        layers: per-layer precision (mixed precision): module path or glob (``fnmatch``, e.g.
            ``features.0.*``) -> ``float`` (left unquantized), ``int8`` or ``int4`` (weight
            dtype, where the target lists it). Later keys win over earlier ones.
        leaf_modules: modules torch.fx must not trace into (module paths, globs or class
            names, e.g. ``Detect``): each runs as one float op between quantized ones, for code
            no trace can follow (``edgekd.quant.trace``).
        tracer: how the model becomes a graph: ``auto`` (torch.fx, then torch.export where fx
            cannot trace it), ``fx`` or ``export`` (``edgekd.quant.aten``; leaf_modules do not
            apply). Both need an example batch beyond the plain fx trace.
        mixed_precision: choose ``layers`` automatically from a per-layer sensitivity pass
            (``edgekd.quant.mixed_precision``); explicit ``layers`` entries still win.
        target: the target profile whose arithmetic is simulated (name or YAML path); in a
            recipe, the first of ``targets`` when unset. None in Python: edgekd's default int8.
        scheme: the resolved quantization scheme (written by ``resolved``; int8 checkpoints
            carry it, so they rebuild without the target file).
    """

    enabled: bool = True
    epochs: int = 4
    lr: float = 2e-4
    calibration_batches: int = 8
    observer: str = "minmax"
    percentile: float = 99.99
    freeze_observers_epoch: int = 2
    freeze_bn_epoch: int = 0
    momentum: float = 0.01
    learnable_scales: bool = False
    weight_bits: int = 8
    activation_bits: int = 8
    layers: dict[str, str] = field(default_factory=dict)
    leaf_modules: list[str] = field(default_factory=list)
    tracer: Literal["auto", "fx", "export"] = "auto"
    mixed_precision: MixedPrecisionConfig = field(default_factory=MixedPrecisionConfig)
    target: str | None = None
    scheme: QuantScheme | None = None

    def __post_init__(self):
        for name in ("epochs", "calibration_batches", "freeze_observers_epoch", "freeze_bn_epoch"):
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
        if self.weight_bits not in (4, 8):
            raise FieldError("weight_bits", f"expected 8 or 4 (W4A8), got {self.weight_bits}")
        for key, precision in self.layers.items():
            if precision not in LAYER_PRECISIONS:
                raise FieldError(f"layers.{key}", f"expected one of {', '.join(LAYER_PRECISIONS)}, got "
                                                  f"{precision!r}{did_you_mean(str(precision), LAYER_PRECISIONS)}")
        if self.tracer not in TRACERS:
            raise FieldError("tracer", f"expected one of {', '.join(TRACERS)}, got {self.tracer!r}"
                                       f"{did_you_mean(str(self.tracer), TRACERS)}")
        if self.activation_bits != 8:
            raise FieldError("activation_bits", f"expected 8, got {self.activation_bits}; 16-bit "
                                                f"activations are set by a target scheme (e.g. qnn-htp-a16)")

    def resolved(self, default_target: str | None = None) -> QATConfig:
        """A copy whose ``scheme`` is filled from ``target`` (or ``default_target``), with
        ``weight_bits`` applied. A profile without a ``quantization`` section gets edgekd's
        default int8 scheme.

        Raises:
            UnknownNameError, ConfigError: unknown or invalid target profile.
            FieldError: the target does not support the requested weight dtype.
        """
        scheme = self.scheme
        target = self.target or default_target
        if scheme is None and target is not None:
            from edgekd.targets import load_target

            scheme = load_target(target).quantization  # None: the profile states no scheme
        scheme = scheme or QuantScheme()
        if self.weight_bits == 4 and scheme.weights.dtype not in ("int4", "uint4"):
            scheme = scheme.with_weights("int4")
        return QATConfig.from_dict({**self.to_dict(), "target": target, "scheme": scheme.to_dict()})


def prepare_qat(model: nn.Module, config: QATConfig, example=None) -> fx.GraphModule:
    """Return a copy of ``model`` with BatchNorm folded and fake-quantization inserted, as the
    scheme of ``config`` (``config.resolved()``) says the target computes.

    ``example``: a batch of inputs (a tensor, or a tuple for several inputs; two samples are
    used). When the plain fx trace fails, the model is traced again while it runs on it, so
    Python that reads shapes, lengths or chunks is followed (``edgekd.quant.trace``).

    Raises:
        QuantizationError: the model cannot be traced (torch.fx, torch.export) or has nothing to quantize.
    """
    scheme = config.resolved().scheme
    model = copy.deepcopy(model).eval()
    if example is not None:
        example = model_inputs.as_tuple(model_inputs.take(example, slice(0, 2)))
    try:
        gm = trace(model, example, config.leaf_modules, config.tracer)
    except Exception as err:  # fx raises many types for untraceable Python
        hint = ("" if example is not None else "; with an example input (prepare_qat(..., example=batch)) "
                "Python that reads shapes, lengths or chunks is traced too")
        raise QuantizationError(
            f"{type(model).__name__} cannot be traced for QAT "
            f"({type(err).__name__}: {' '.join(str(err).split())[:300]}){hint}. Move data-dependent "
            f"control flow out of forward(), or name the module that holds it in qat.leaf_modules "
            f"(it then runs as one float op)") from None
    normalize(gm, model)  # a zoo's own BatchNorm/Linear/Conv subclasses back to torch.nn layers
    decompose_attention(gm)  # fused attention as matmul, softmax, matmul: each product quantized
    if scheme.full_integer and scheme.fixed_output("l2_normalize") is not None:
        decompose_layer_norm(gm)  # LayerNorm as MEAN, SUB, L2_NORMALIZATION and a per-channel affine
        rewrite_normalize(gm, example)  # F.normalize as L2_NORMALIZATION
    if config.freeze_bn_epoch > 0:
        fuse_conv_bn(gm)  # trained live until freeze_bn_epoch, folded by ``freeze``
    fold_batchnorm(gm)  # every BN (all of them, or those fuse_conv_bn could not pair)
    quantized = _swap_quant_modules(gm, scheme, layer_precisions(gm, config.layers, scheme))
    if not quantized:
        raise QuantizationError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    make = _QuantizerFactory(scheme, config.momentum)
    outputs = {_insert_output_quantizer(gm, node, kind, make, scheme.fuse) for node, kind in quantized}
    outputs |= _insert_fixed_output_quantizers(gm, make)
    for node, _ in quantized:
        _ensure_input_quantized(gm, node, outputs, make)
    _quantize_integer_region(gm, make)
    if "concat" in scheme.shared_scales:
        _share_concat_scales(gm, make)
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
        q.observer = factory(qmin=q.qmin, qmax=q.qmax, symmetric=q.symmetric, **observer_options)
    count = 0
    for x in batches:
        model_inputs.call(model, x)  # one tensor, or a tuple for several inputs
        count += 1
    for _, q in quantizers:
        seen = q.observer.range() if q.fixed is None else ()  # a fixed output observes nothing
        if seen and all(abs(v) != float("inf") for v in seen):
            q.set_range(*seen)
        q.observing, q.enabled, q.observer = False, True, None
    model.train(was_training)
    if count == 0:
        raise QuantizationError("calibration got no batches; give at least one batch of inputs")
    keep_requantizable(model)
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
    """Make every scale and zero point a constant (ready to export); returns the model in eval
    mode. Conv+BN pairs still live (``freeze_bn_epoch``) are folded first, as before QAT."""
    set_range_tracking(model, False)
    fold_conv_bn(model)
    for module in model.modules():
        if isinstance(module, QUANT_LAYERS):
            module.weight_quant.freeze(module.weight)
    keep_requantizable(model)
    for module in model.modules():
        if isinstance(module, ActivationQuantizer):
            module.freeze()
    return model.eval()


MAX_REQUANTIZATION = 255.0  # int8 kernels take input scale x weight scale / output scale < 256 (XNNPACK)


@torch.no_grad()
def keep_requantizable(model: nn.Module) -> int:
    """Widen the output range of a conv/linear whose output scale is so small (a range
    calibration saw as constant: a dead layer) that int8 kernels cannot requantize to it:
    input scale x weight scale / output scale must stay below 256, or XNNPACK refuses the layer
    (and LiteRT 2.x aborts the process). Returns the number of ranges widened."""
    if not isinstance(model, fx.GraphModule):
        return 0
    widened = 0
    for node in model.graph.nodes:
        layer = model.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(layer, QUANT_LAYERS):
            continue
        before, after = _quantizer_before(model, node.args[0]), _quantizer_after(model, node)
        if before is None or after is None or after.fixed is not None or not before.calibrated:
            continue
        weight_scale = float(layer.weight_quant.compute_scale(layer.weight).max())
        floor = float(before.scale) * weight_scale / MAX_REQUANTIZATION
        if after.calibrated and float(after.scale) < floor:
            lo, hi = float(after.min_val), float(after.max_val)
            if hi > lo:  # the same range, stretched about zero until its scale reaches the floor
                grow = floor * (after.qmax - after.qmin) / (hi - lo)
                after.set_range(lo * grow, hi * grow)
            else:  # nothing but one value seen
                after.set_range(0.0, floor * (after.qmax - after.qmin))
            widened += 1
    return widened


def _quantizer_before(gm: fx.GraphModule, node, scheme: QuantScheme | None = None) -> ActivationQuantizer | None:
    """The quantizer whose grid ``node``'s value is on (through reshapes, and the average pools
    ``scheme`` keeps on their input's grid)."""
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, ActivationQuantizer):
                return module
            if isinstance(module, TiedQuantizer):
                return module.source
        if not (_is_scale_preserving(gm, node) or scheme is not None and _is_shared_pool(gm, node, scheme)):
            return None
        node = node.args[0]
    return None


def _quantizer_after(gm: fx.GraphModule, node: fx.Node) -> ActivationQuantizer | None:
    """The quantizer a layer writes through (after the activations fused into it)."""
    while len(node.users) == 1:
        node = next(iter(node.users))
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, ActivationQuantizer):
                return module
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                continue
        if node.op in ("call_function", "call_method") and _node_kind(gm, node, ACTIVATION_MODULES,
                                                                       ACTIVATION_FUNCTIONS) is not None:
            continue
        return None
    return None


def calibrated_copy(model: nn.Module, config: QATConfig, batches: Iterable[torch.Tensor],
                    example=None) -> fx.GraphModule:
    """A frozen quantized copy of ``model``: prepared with ``config`` (traced with ``example``, by
    default the first batch when ``batches`` is a sequence), calibrated on ``batches`` with its
    observer, scales frozen (PTQ, and each trial of the mixed-precision search)."""
    if example is None and isinstance(batches, Sequence) and batches:
        example = batches[0]
    q = prepare_qat(model, config, example)
    calibrate(q, batches, config.observer, **observer_options(config))
    return freeze(q)


def rebuild_frozen(model: nn.Module, config: QATConfig, example=None) -> fx.GraphModule:
    """The structure of a frozen QAT model, to load a saved int8 checkpoint's state dict into
    (``example``: inputs of the recorded shape, for a model only the shape-aware trace follows)."""
    gm = prepare_qat(model, QATConfig.from_dict({**config.to_dict(), "freeze_bn_epoch": 0}),  # saved folded
                     example)
    for module in gm.modules():
        if isinstance(module, (PerChannelWeightQuantizer, ActivationQuantizer)):
            module.frozen = True
    return gm.eval()


class _QuantizerFactory:
    """Activation quantizers as the scheme says op kind ``kind`` writes its output."""

    def __init__(self, scheme: QuantScheme, momentum: float):
        self.scheme, self.momentum = scheme, momentum

    def __call__(self, kind: str) -> ActivationQuantizer:
        rule = self.scheme.activation_rule(kind)
        qmin, qmax = rule.qrange()
        return ActivationQuantizer(self.momentum, qmin, qmax, rule.symmetric, self.scheme.fixed_output(kind))


def layer_kind(module: nn.Module) -> str:
    """The scheme op kind of a conv/linear layer: conv, depthwise_conv or linear."""
    if isinstance(module, nn.Linear):
        return "linear"
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    return "depthwise_conv" if depthwise else "conv"


def quantizable_layers(model: nn.Module) -> list[str]:
    """Module paths of the conv/linear layers QAT quantizes, in definition order: torch.nn's, and
    subclasses of them (timm's ``Linear``, ``Conv2dSame``), which ``normalize`` makes plain."""
    return [name for name, m in model.named_modules()
            if isinstance(m, tuple(LAYER_SWAPS)) and not isinstance(m, QUANT_LAYERS)]


def layer_precisions(model: nn.Module, layers: dict[str, str], scheme: QuantScheme) -> dict[str, str]:
    """{layer path: precision} for the layers that ``layers`` (paths or globs) override.

    Raises:
        FieldError: a key matches no quantizable layer (the valid paths are listed), or asks
            for a weight dtype the target does not list.
    """
    paths = quantizable_layers(model)
    chosen: dict[str, str] = {}
    for key, precision in layers.items():
        matched = [p for p in paths if fnmatch.fnmatchcase(p, key)]
        if not matched:
            raise FieldError(f"layers.{key}", f"matches no conv/linear layer{did_you_mean(key, paths)}; "
                                              f"layers: {', '.join(paths)}")
        if precision != "float" and precision not in scheme.weight_dtypes:
            raise FieldError(f"layers.{key}", f"{precision} weights are not supported by this target "
                                              f"({scheme.runtime}: weight dtypes {', '.join(scheme.weight_dtypes)})")
        chosen.update({p: precision for p in matched})
    return chosen


def _swap_quant_modules(gm: fx.GraphModule, scheme: QuantScheme,
                        precisions: dict[str, str] | None = None) -> list[tuple[fx.Node, str]]:
    modules = dict(gm.named_modules())
    precisions = precisions or {}
    nodes = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        cls = LAYER_SWAPS.get(type(modules[node.target]))
        if cls is None or precisions.get(node.target) == "float":
            continue
        float_module = modules[node.target]
        kind = layer_kind(float_module)
        rule = scheme.weight_rule(kind).with_precision(precisions.get(node.target))
        qmin, qmax = rule.qrange()
        channels = float_module.out_channels if kind != "linear" else float_module.out_features
        weight_quant = PerChannelWeightQuantizer(channels, qmin, qmax, rule.symmetric, rule.per_channel,
                                                 export_range=RANGES[CONTAINER.get(rule.dtype, rule.dtype)],
                                                 dtype=rule.dtype)
        qmod = cls.from_float(float_module, weight_quant)
        gm.set_submodule(node.target, qmod)
        nodes.append((node, kind))
    return nodes


def _node_kind(gm: fx.GraphModule, node: fx.Node, modules: dict[str, tuple], functions: dict[str, set]) -> str | None:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return next((k for k, types in modules.items() if isinstance(module, types)), None)
    if node.op == "call_function":
        return next((k for k, fns in functions.items() if node.target in fns), None)
    if node.op == "call_method":
        return next((k for k in functions if node.target == k), None)
    return None


def _is_fused_activation(gm: fx.GraphModule, node: fx.Node, fuse: list[str]) -> bool:
    return _node_kind(gm, node, ACTIVATION_MODULES, ACTIVATION_FUNCTIONS) in fuse


def _source_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """The scheme op kind of whatever writes ``node``'s value (for its quantizer's rule)."""
    if node.op == "call_function" and node.target in ADD_FUNCTIONS or (
            node.op == "call_method" and node.target == "add"):
        return "add"
    if node.op == "call_function" and node.target is torch.cat:
        return "concat"
    return _node_kind(gm, node, FIXED_OUTPUT_MODULES, FIXED_OUTPUT_FUNCTIONS) or "activation"


def _is_scale_preserving(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), SCALE_PRESERVING_MODULES)
    if node.op == "call_function":
        return node.target in SCALE_PRESERVING_FUNCTIONS
    return node.op == "call_method" and node.target in SCALE_PRESERVING_METHODS


def _insert_after(gm: fx.GraphModule, node: fx.Node, quantizer: ActivationQuantizer) -> fx.Node:
    """Insert ``quantizer`` after ``node``; all former users of ``node`` now read from it."""
    if node.op == "call_module":
        parent, _, leaf = node.target.rpartition(".")
        name = f"{parent + '.' if parent else ''}{leaf}_quant"
    else:
        name = f"{node.name}_quant"
    gm.add_submodule(name, quantizer)
    users = list(node.users)
    with gm.graph.inserting_after(node):
        qnode = gm.graph.call_module(name, (node,))
    for user in users:
        user.replace_input_with(node, qnode)
    return qnode


def _insert_output_quantizer(gm: fx.GraphModule, node: fx.Node, kind: str, make: _QuantizerFactory,
                             fuse: list[str]) -> fx.Node:
    """A quantizer of ``kind`` after ``node`` and the activations fused into it; the one already
    there when that point is quantized."""
    point = node
    while len(point.users) == 1 and _is_fused_activation(gm, next(iter(point.users)), fuse):
        point = next(iter(point.users))
    if len(point.users) == 1 and _is_quantizer(gm, next(iter(point.users))):
        return next(iter(point.users))
    return _insert_after(gm, point, make(kind))


def _insert_fixed_output_quantizers(gm: fx.GraphModule, make: _QuantizerFactory) -> set[fx.Node]:
    """Softmax/sigmoid/tanh whose output scale the target fixes get a fixed quantizer after them."""
    inserted = set()
    for node in list(gm.graph.nodes):
        kind = _node_kind(gm, node, FIXED_OUTPUT_MODULES, FIXED_OUTPUT_FUNCTIONS)
        if kind is not None and make.scheme.fixed_output(kind) is not None:
            inserted.add(_insert_after(gm, node, make(kind)))
    return inserted


def _is_shared_pool(gm: fx.GraphModule, node: fx.Node, scheme: QuantScheme) -> bool:
    """An average pool whose output the target keeps on its input's grid."""
    if "avg_pool" not in scheme.shared_scales:
        return False
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), AVG_POOL_MODULES)
    return node.op == "call_function" and node.target in AVG_POOL_FUNCTIONS


def _ensure_input_quantized(gm: fx.GraphModule, node: fx.Node, quantized: set[fx.Node],
                            make: _QuantizerFactory) -> None:
    source = node.args[0]
    walk, through_pool = source, False
    while isinstance(walk, fx.Node) and walk not in quantized and (
            _is_scale_preserving(gm, walk) or _is_shared_pool(gm, walk, make.scheme)):
        through_pool |= _is_shared_pool(gm, walk, make.scheme)
        walk = walk.args[0]
    if walk not in quantized:
        if source.op == "placeholder":
            gm.add_submodule("input_quant", make("input"))
            with gm.graph.inserting_after(source):
                qnode = gm.graph.call_module("input_quant", (source,))
            for user in [u for u in source.users if u is not qnode]:
                user.replace_input_with(source, qnode)
            quantized.add(qnode)
            return
        # quantize where the value is computed (e.g. after a concat, or an average pool that
        # keeps no scale), so the scale-preserving ops between (flatten, dropout) carry
        # integers, as integer-only targets need
        computed = isinstance(walk, fx.Node) and walk.op != "placeholder"
        qnode = _insert_after(gm, walk if computed else source, make(_source_kind(gm, walk if computed else source)))
        quantized.add(qnode)
        if not computed:
            return
        walk = qnode
    if through_pool:  # re-quantize the pooled values on the grid they were pooled from
        source_quant = gm.get_submodule(walk.target)
        if isinstance(source_quant, ActivationQuantizer):
            quantized.add(_insert_after(gm, source, TiedQuantizer(source_quant)))


# Ops between quantized layers that int8 kernels compute on integers (TFLite's and onnxruntime's
# QLinear* / QDQ node units): their outputs get a quantizer too, as a full-integer model needs.
REGION_MODULES = {"activation": (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.LeakyReLU,
                                 nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),  # a BN no conv precedes
                  **FIXED_OUTPUT_MODULES, "avg_pool": AVG_POOL_MODULES}
REGION_FUNCTIONS = {"activation": {torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.hardswish,
                                   nn.functional.hardsigmoid, nn.functional.gelu, nn.functional.leaky_relu,
                                   operator.mul, torch.mul, torch.mean, torch.sum,
                                   operator.matmul, torch.matmul, torch.bmm,  # attention's q @ k.T
                                   nn.functional.pad,  # (its own grid: a pad value such as 1.0 must be on it)
                                   channel_affine},  # a LayerNorm's gamma and beta (edgekd.quant.layer_norm)
                    "add": ADD_FUNCTIONS | {operator.sub, torch.sub}, "concat": {torch.cat}, **FIXED_OUTPUT_FUNCTIONS,
                    "avg_pool": AVG_POOL_FUNCTIONS}
REGION_METHODS = {"add": "add", "sub": "add", "mul": "activation", "mean": "activation", "sum": "activation",
                  "sigmoid": "sigmoid",
                  "relu": "activation", "softmax": "softmax", "matmul": "activation", "bmm": "activation"}
SILU = (nn.SiLU,)
SILU_FUNCTIONS = {nn.functional.silu}


def _region_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    if node.op == "call_method":
        return REGION_METHODS.get(node.target)
    return _node_kind(gm, node, REGION_MODULES, REGION_FUNCTIONS)


def _cast_of_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A float copy of a model input that no quantizer reads (an attention mask cast to float
    for a masked sum), through data movement and casts alone."""
    cast = False
    while node.op != "placeholder":
        if not (_is_scale_preserving(gm, node) and node.args and isinstance(node.args[0], fx.Node)):
            return False
        cast = cast or node.op == "call_method" and node.target in CASTS
        node = node.args[0]
    return cast  # (the input itself, float already, has its own quantizer)


CASTS = {"to", "float", "type_as"}


def _is_quantizer(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), (ActivationQuantizer, TiedQuantizer))


def _quantize_integer_region(gm: fx.GraphModule, make: _QuantizerFactory) -> None:
    """Quantize the output of every op whose tensor inputs are all quantized (residual adds, SE
    gates' mean/sigmoid/mul, SiLU, Hardswish, GELU, average pools, concats), in graph order, so
    quantized values flow from the first quantized layer to the last without a float island:
    TFLite's int8 models have no float ops at all, and onnxruntime then runs QLinearAdd /
    QLinearMul / QLinearSigmoid instead of dequantizing around a float op. A ReLU/ReLU6 after
    such an op (an add) is fused: the quantizer goes after it. SiLU becomes x * sigmoid(x) with
    the sigmoid's output quantized (TFLite's LOGISTIC writes 1/256), as its kernels compute it.

    Transformers: softmax probabilities are quantized whatever their input; scores plus an
    additive attention mask become an integer add where the target has no float ops (or the mask
    is constant); token embeddings are int8 there too. Where the target has float kernels, what
    only LayerNorm reads stays float, and quantizers no int8 kernel reads are removed."""
    carried: set[fx.Node] = set()  # nodes whose value is on an integer grid
    region: list[fx.Node] = []  # the quantizers this pass put after ops between layers
    joins = output_joins(gm)  # concats only the model's outputs read: float on every target
    static: set[fx.Node] = set()  # constants, and what is computed from shapes alone (an anchor grid)
    for node in list(gm.graph.nodes):
        if node.op in ("placeholder", "output"):
            continue
        if _is_static(node, static):
            static.add(node)
            continue
        if _is_quantizer(gm, node):
            carried.add(node)
            continue
        tensors = [a for a in node.all_input_nodes if a not in static]
        if _is_masked_scores(gm, node, carried, static, make.scheme):
            mask = next(a for a in node.all_input_nodes if a not in carried)
            carried.add(_quantize_masked_scores(gm, node, mask, make))
            continue
        if _is_lookup(gm, node) and (make.scheme.full_integer or not make.scheme.float_fallback):
            carried.add(_insert_output_quantizer(gm, node, "activation", make, make.scheme.fuse))
            continue  # an embedding's rows, int8 where no float op may read them
        if tensors and _region_kind(gm, node) == "softmax" and not _is_quantizer(gm, next(iter(node.users), node)):
            # probabilities are in [0, 1] whatever the input: quantized, they feed an int8 matmul
            carried.add(_insert_output_quantizer(gm, node, "softmax", make, make.scheme.fuse))
            continue
        if make.scheme.full_integer and any(a in carried for a in tensors) and _region_kind(gm, node):
            for arg in [a for a in tensors if a not in carried and _cast_of_input(gm, a)]:
                carried.add(_insert_after(gm, arg, make("activation")))  # a mask from an integer input
            tensors = [a for a in node.all_input_nodes if a not in static]
        if not tensors or not all(a in carried for a in tensors):
            continue
        if _is_scale_preserving(gm, node):
            carried.add(node)  # keeps its input's grid
            continue
        if _is_shared_pool(gm, node, make.scheme):  # re-quantized on its input's grid
            source = _quantizer_before(gm, node.args[0], make.scheme)
            if source is None or any(_is_quantizer(gm, u) for u in node.users):
                carried.add(node)
            else:
                carried.add(_insert_after(gm, node, TiedQuantizer(source)))
            continue
        if _node_kind(gm, node, {"silu": SILU}, {"silu": SILU_FUNCTIONS}) == "silu":
            carried.add(_split_silu(gm, node, make))
            continue
        users = list(node.users)
        if len(users) == 1 and _is_quantizer(gm, users[0]):
            continue  # already quantized where it is computed
        if _read_in_float_only(gm, node, make.scheme):
            carried.difference_update(_drop_input_quantizers(gm, node))
            continue
        if node in joins:
            continue  # dequantized parts joined in float (see output_joins)
        kind = _region_kind(gm, node)
        if kind is None and node.target in (operator.truediv, torch.div) and (
                not isinstance(node.args[1], fx.Node) or node.args[1] in static):
            kind = "activation"  # division by a constant is a multiplication
        if kind is None:
            continue  # an op without integer kernels (layer norm, ...) stays float
        inserted = _insert_output_quantizer(gm, node, kind, make, make.scheme.fuse)
        carried.add(inserted)
        region.append(inserted)
    if make.scheme.float_fallback and not make.scheme.full_integer:
        carried.difference_update(_prune_unread_by_int8(gm, region))
    _quantize_model_outputs(gm, carried, make)


MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm}
NORM_MODULES = (nn.LayerNorm, nn.GroupNorm)
NORM_FUNCTIONS = {nn.functional.layer_norm, nn.functional.group_norm}


def _prune_unread_by_int8(gm: fx.GraphModule, region: list[fx.Node]) -> list[fx.Node]:
    """On a target with float kernels, remove the quantizers after ops between layers that no
    int8 kernel reads: a pre-LN transformer's residual stream, read by LayerNorms and the next
    residual sum, stays float as onnxruntime would compute it, instead of being rounded at every
    block. Last first, so a sum that only fed a removed one goes too. Returns the removed nodes."""
    removed, alive = [], set(gm.graph.nodes)  # (region may hold a quantizer twice, or one already dropped)
    for qnode in reversed(region):
        if qnode in removed or qnode not in alive or _read_by_int8(gm, qnode):
            continue
        qnode.replace_all_uses_with(qnode.args[0])
        gm.graph.erase_node(qnode)
        gm.delete_submodule(qnode.target)
        removed.append(qnode)
    return removed


def _read_by_int8(gm: fx.GraphModule, qnode: fx.Node) -> bool:
    """Whether a quantized layer, or an op with an integer kernel whose own output is quantized,
    reads ``qnode``'s value (through ops that keep its grid)."""
    stack = list(qnode.users)
    while stack:
        user = stack.pop()
        if user.op == "output":
            continue
        if user.op == "call_module" and isinstance(gm.get_submodule(user.target), (*QUANT_LAYERS, QuantConvBn2d)):
            return True
        if _node_kind(gm, user, {}, {"matmul": MATMUL_FUNCTIONS}) == "matmul" or (
                user.op == "call_method" and user.target in ("matmul", "bmm")):
            return True  # a product of two activations: int8 inputs, whatever its output (MatMulIntegerToFloat)
        if _is_quantizer(gm, user):
            return True
        if _region_kind(gm, user) is not None and any(_is_quantizer(gm, u) for u in user.users):
            return True  # an integer op (an add, a matmul), not a float one whose output is quantized (LayerNorm)
        if _is_scale_preserving(gm, user):
            stack.extend(user.users)
    return False


def _is_lookup(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _node_kind(gm, node, {"lookup": (nn.Embedding,)}, {"lookup": {nn.functional.embedding}}) == "lookup"


def _read_in_float_only(gm: fx.GraphModule, node: fx.Node, scheme: QuantScheme) -> bool:
    """A value only normalization layers read, on a target that runs them in float: quantizing
    it (a transformer's residual sum before its LayerNorm) would add error no kernel needs."""
    users = list(node.users)
    return (scheme.float_fallback and not scheme.full_integer and bool(users)
            and all(_node_kind(gm, u, {"norm": NORM_MODULES}, {"norm": NORM_FUNCTIONS}) == "norm" for u in users))


def _drop_input_quantizers(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """Remove the quantizers only ``node`` reads (it computes in float): a transformer's FFN output,
    whose outlier features lose most to int8, goes to the residual sum unrounded. Returns them."""
    dropped = []
    for arg in list(node.all_input_nodes):
        while len(arg.users) == 1 and _is_scale_preserving(gm, arg) and isinstance(arg.args[0], fx.Node):
            arg = arg.args[0]  # (through a dropout or a reshape)
        if (_is_quantizer(gm, arg) and len(arg.users) == 1 and isinstance(gm.get_submodule(arg.target),
                                                                          ActivationQuantizer)):
            arg.replace_all_uses_with(arg.args[0])
            gm.graph.erase_node(arg)
            gm.delete_submodule(arg.target)
            dropped.append(arg)
    return dropped


def _is_masked_scores(gm: fx.GraphModule, node: fx.Node, carried: set[fx.Node], static: set[fx.Node],
                      scheme: QuantScheme) -> bool:
    """Attention scores plus an additive mask, read by a softmax: on a target with no float ops,
    or when the mask is a constant (causal) one that would otherwise be quantized with the scores
    (elsewhere the add and the softmax run in float and only the probabilities are quantized)."""
    is_add = node.op == "call_function" and node.target in ADD_FUNCTIONS or (
        node.op == "call_method" and node.target == "add")
    inputs, users = node.all_input_nodes, list(node.users)
    if not (is_add and len(inputs) == 2 and sum(a in carried for a in inputs) == 1 and len(users) == 1
            and _region_kind(gm, users[0]) == "softmax"):
        return False
    mask = next(a for a in inputs if a not in carried)
    return scheme.full_integer or not scheme.float_fallback or mask in static


def _quantize_masked_scores(gm: fx.GraphModule, node: fx.Node, mask: fx.Node, make: _QuantizerFactory) -> fx.Node:
    """An integer add of scores and mask: the sum's quantizer observes the scores only, and the
    mask is quantized so that a masked position saturates to the sum's lowest code."""
    out = _insert_output_quantizer(gm, node, "add", make, make.scheme.fuse)
    quantizer = gm.get_submodule(out.target)
    quantizer.masked = True
    name = f"{node.name}_mask_quant"
    gm.add_submodule(name, MaskQuantizer(quantizer))
    with gm.graph.inserting_before(node):
        qmask = gm.graph.call_module(name, (mask,))
    node.replace_input_with(mask, qmask)
    return out


def _quantize_model_outputs(gm: fx.GraphModule, carried: set[fx.Node], make: _QuantizerFactory) -> None:
    """A model output on a quantized grid without a quantizer of its own (a classifier ending in
    conv, ReLU, shared average pool, flatten: SqueezeNet) is re-quantized on its source's grid, so
    a full-integer model has a scale for it."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    for arg in output.all_input_nodes:
        if arg not in carried or _is_quantizer(gm, arg):
            continue
        source = _quantizer_before(gm, arg, make.scheme)
        if source is not None:
            _insert_after(gm, arg, TiedQuantizer(source))


SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}
METADATA_ONLY = {torch.zeros_like, torch.ones_like, torch.empty_like}


def _is_static(node: fx.Node, static: set[fx.Node]) -> bool:
    """A value that does not depend on the input's values: a parameter or buffer, a tensor's
    shape, or anything computed from those alone (``torch.arange(h)`` of an anchor grid)."""
    if node.op == "get_attr":
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in SHAPE_ATTRIBUTES:
        return True
    if node.op == "call_method" and node.target in ("size", "dim", "new_full", "new_zeros", "new_ones", "new_empty"):
        return True  # x.new_full(shape, v) takes only x's dtype and device
    if node.op == "call_method" and node.target in ("type_as", "to") and node.args[0] in static:
        return True  # the other tensor gives only its dtype and device
    if node.op == "call_function" and node.target in METADATA_ONLY:
        return True
    return node.op in ("call_function", "call_method") and all(a in static for a in node.all_input_nodes)


def _split_silu(gm: fx.GraphModule, node: fx.Node, make: _QuantizerFactory) -> fx.Node:
    """Replace a SiLU node by sigmoid -> quantizer -> mul -> quantizer; returns the last quantizer."""
    x = node.args[0]
    with gm.graph.inserting_before(node):
        gate = gm.graph.call_function(torch.sigmoid, (x,))
    gate_q = _insert_after(gm, gate, make("sigmoid"))
    with gm.graph.inserting_after(gate_q):
        product = gm.graph.call_function(operator.mul, (x, gate_q))
    users = list(node.users)
    node.replace_all_uses_with(product)
    gm.graph.erase_node(node)
    if len(users) == 1 and _is_quantizer(gm, users[0]):
        return users[0]  # the SiLU was quantized already: its quantizer now reads the product
    return _insert_after(gm, product, make("activation"))


def output_joins(gm: fx.GraphModule) -> set[fx.Node]:
    """Concats whose value reaches the model's outputs through data movement alone (reshapes,
    slices, transposes): a detection head joining boxes in pixels and class scores in [0, 1].
    No int8 kernel reads them, and one int8 scale cannot hold both parts (the scores would round
    to 0 at a scale made for hundreds of pixels), so they stay float on every target: an int8
    file dequantizes each part on its own grid and joins them in float, where the model's float
    outputs are read anyway (a full-integer TFLite file ends in DEQUANTIZE, float CONCATENATION)."""
    tail: set[fx.Node] = set()
    for node in reversed(gm.graph.nodes):
        if _moves_data(gm, node) and node.users and all(u.op == "output" or u in tail for u in node.users):
            tail.add(node)
    return {n for n in tail if n.op == "call_function" and n.target is torch.cat}


# What an output tail may hold: ops that only move data and export to ONNX ops the TFLite writer
# runs in float after the last quantized op (``export.tflite.convert.TAIL_OPS``).
TAIL_FUNCTIONS = {torch.cat, torch.flatten, torch.reshape, operator.getitem, torch.chunk, torch.split, torch.unbind,
                  torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze}
TAIL_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "chunk", "split", "unbind",
                "transpose", "permute", "reshape_as", "view_as"}


def _moves_data(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (nn.Flatten, nn.Identity))
    if node.op == "call_function":
        return node.target in TAIL_FUNCTIONS
    return node.op == "call_method" and node.target in TAIL_METHODS


def _share_concat_scales(gm: fx.GraphModule, make: _QuantizerFactory) -> None:
    """Every ``torch.cat`` reads and writes one scale (TFLite's CONCATENATION spec): its output
    quantizer observes the joined tensor, and each input is quantized on that grid, by a
    ``TiedQuantizer`` that replaces the input's own quantizer when the concat is its only user
    (the producer then writes straight in the concat's scale), or sits on the edge otherwise.
    Joins that only the outputs read stay float (``output_joins``)."""
    joins = output_joins(gm)
    for node in list(gm.graph.nodes):
        if not (node.op == "call_function" and node.target is torch.cat) or node in joins:
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
                gm.get_submodule(users[0].target), ActivationQuantizer):
            out_q = gm.get_submodule(users[0].target)
        else:
            out_q = gm.get_submodule(_insert_after(gm, node, make("concat")).target)
        inputs = list(node.args[0])
        for i, inp in enumerate(inputs):
            source = inp  # the quantizer behind reshapes that keep its scale (a detect head's view)
            while (isinstance(source, fx.Node) and len(source.users) == 1 and _is_scale_preserving(gm, source)
                   and isinstance(source.args[0], fx.Node)):
                source = source.args[0]
            own = gm.get_submodule(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
            if isinstance(own, ActivationQuantizer) and own.fixed is None and len(source.users) == 1:
                gm.set_submodule(source.target, TiedQuantizer(out_q))
                continue
            name = f"{node.name}_input{i}_quant"
            gm.add_submodule(name, TiedQuantizer(out_q))
            with gm.graph.inserting_before(node):
                inputs[i] = gm.graph.call_module(name, (inp,))
        node.args = (inputs, *node.args[1:])


__all__ = ["QATConfig", "activation_quantizers", "calibrate", "calibrated_copy", "freeze", "prepare_qat",
           "rebuild_frozen", "set_range_tracking"]
