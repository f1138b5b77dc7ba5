"""Quantization schemes: what a target's int8 kernels compute, stated per op kind.

A target profile's ``quantization:`` section (in the spirit of Sony MCT's target platform
capabilities and Qualcomm AIMET's quantsim configs) says, for the runtime it describes, how
weights and activations are quantized: dtype (int8, uint8, int16/uint16 activations, int4 weights),
symmetric or asymmetric, per channel or per tensor, narrow range; which op kinds write fixed output
scales (TFLite's softmax: 1/256, zero point -128); which ops must keep their input's scale (max
pool, reshape) or share one scale across inputs (concat); which activations the runtime fuses into
the conv/linear before them; and whether ops may fall back to float at all. QAT and PTQ simulate
that scheme (``edgekd.quant.qat``), and ``edgekd.quant.validate`` checks an exported artifact
against it.

Op kinds (``OP_KINDS``): ``input`` (the model input), ``conv``, ``depthwise_conv``, ``linear``,
``add``, ``concat``, ``max_pool``, ``avg_pool``, ``reshape``, ``softmax``, ``sigmoid``, ``tanh``,
``l2_normalize``. A ``full_integer`` scheme that fixes the ``l2_normalize`` output (TFLite's int8
``L2_NORMALIZATION``: 1/128, zero point 0) computes LayerNorm on integers through it
(``edgekd.quant.layer_norm``); elsewhere LayerNorm runs in float where the target allows.

    quantization:
      weights: {dtype: int8, symmetric: true, per_channel: true, narrow_range: true}
      activations: {dtype: int8, symmetric: false}
      ops:
        softmax: {output_scale: 0.00390625, output_zero_point: -128}
      shared_scales: [max_pool, reshape, concat]
      fuse: [relu, relu6]
      full_integer: false            # true: no float op between quantized ones (TFLite int8)
      float_fallback: true
      weight_dtypes: [int8]          # what a recipe may ask for (e.g. int4 for W4A8)
      activation_dtypes: [int8]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from edgekd.config import Config, FieldError
from edgekd.errors import did_you_mean

DType = Literal["int8", "uint8", "int16", "uint16", "int4", "uint4"]
RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
          "int4": (-8, 7), "uint4": (0, 15)}
WEIGHT_DTYPES = ("int8", "uint8", "int4", "uint4")
ACTIVATION_DTYPES = ("int8", "uint8", "int16", "uint16")
OP_KINDS = ("input", "conv", "depthwise_conv", "linear", "add", "concat", "max_pool", "avg_pool",
            "reshape", "softmax", "sigmoid", "tanh", "l2_normalize")
WEIGHTED_KINDS = ("conv", "depthwise_conv", "linear")
FUSABLE = ("relu", "relu6")


@dataclass
class TensorRule(Config):
    """How one tensor is quantized.

    Attributes:
        dtype: integer type of the quantized values.
        symmetric: zero point fixed at 0 (signed) or at the middle of the range (unsigned).
        per_channel: one scale per output channel (weights only); else one per tensor.
        narrow_range: signed values avoid the lowest code (int8 in [-127, 127]), as TFLite and
            XNNPACK require of weights.
        reduce_range: 8-bit weights use 7 bits (int8 in [-64, 64], uint8 in [0, 127]; other
            dtypes are not affected, so a layer moved to int4 and back keeps the rule), as
            onnxruntime's ``quantize_static(reduce_range=True)`` does. x86 int8 kernels on CPUs
            without VNNI multiply u8 activations by s8 weights with ``vpmaddubsw``, which adds
            pairs of products into int16 and saturates: 2 x 255 x 127 overflows 32767, 2 x 255 x 64
            does not. Measured on an AVX2 AMD EPYC (no VNNI): full-range weights put onnxruntime
            and OpenVINO up to 5 steps off the exact result of one 3x3 conv, 7-bit weights 0.
    """

    dtype: DType = "int8"
    symmetric: bool = False
    per_channel: bool = False
    narrow_range: bool = False
    reduce_range: bool = False


    @property
    def bits(self) -> int:
        return {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int4": 4, "uint4": 4}[self.dtype]

    @property
    def signed(self) -> bool:
        return not self.dtype.startswith("u")

    def with_precision(self, precision: str | None) -> TensorRule:
        """This weight rule with a per-layer override's dtype (None or "float": unchanged)."""
        return self if precision is None or precision == "float" else replace(self, dtype=precision)

    @property
    def reduces_range(self) -> bool:
        """``reduce_range`` in effect: it applies to 8-bit types only (an int4 layer ignores it)."""
        return self.reduce_range and self.bits == 8

    def qrange(self) -> tuple[int, int]:
        """The integer codes used: (qmin, qmax)."""
        lo, hi = RANGES[self.dtype]
        if self.reduces_range:
            return (lo // 2, -lo // 2) if self.signed else (0, hi // 2)
        return (lo + 1, hi) if self.narrow_range and self.signed else (lo, hi)

    def symmetric_zero_point(self) -> int:
        """The zero point of a symmetric rule (0 for signed types, the mid code for unsigned)."""
        lo, hi = RANGES[self.dtype]
        return 0 if self.signed else (hi + 1) // 2

    def describe(self) -> str:
        parts = [self.dtype, "symmetric" if self.symmetric else "asymmetric",
                 "per-channel" if self.per_channel else "per-tensor"]
        parts += ["narrow range"] if self.narrow_range else []
        parts += [f"reduced to [{self.qrange()[0]}, {self.qrange()[1]}]"] if self.reduces_range else []
        return " ".join(parts)


@dataclass
class OpRule(Config):
    """Overrides for one op kind; unset fields inherit the scheme's defaults.

    Attributes:
        weights: the weight rule of conv/depthwise_conv/linear.
        activations: the rule of the op's output.
        output_scale, output_zero_point: a fixed output quantization (softmax, sigmoid, tanh).
    """

    weights: TensorRule | None = None
    activations: TensorRule | None = None
    output_scale: float | None = None
    output_zero_point: int | None = None

    def __post_init__(self):
        if (self.output_scale is None) != (self.output_zero_point is None):
            raise FieldError("output_scale", "give output_scale and output_zero_point together")
        if self.output_scale is not None and not self.output_scale > 0:
            raise FieldError("output_scale", f"must be > 0, got {self.output_scale}")


def _default_weights() -> TensorRule:
    return TensorRule(dtype="int8", symmetric=True, per_channel=True, narrow_range=True, reduce_range=True)


@dataclass
class QuantScheme(Config):
    """The integer arithmetic of one runtime on one device (see the module docstring).

    The defaults are the int8 scheme every edgekd CPU runtime computes exactly on any x86-64
    CPU (AVX2 and up) and on Arm: symmetric per-channel int8 weights in [-64, 64]
    (``reduce_range``), asymmetric per-tensor int8 activations, ReLU/ReLU6 fused.

    Attributes:
        runtime: the runtime this scheme describes (what the validator reports against).
        weights: default weight rule.
        activations: default activation rule.
        ops: per-op-kind overrides (``OP_KINDS``).
        shared_scales: op kinds whose output keeps its input's scale (all inputs for concat).
        fuse: activations the runtime fuses into the conv/linear before them (``relu``, ``relu6``):
            the output is quantized after the activation, not between.
        full_integer: the target's int8 model format has no float ops between its quantized
            input and output (TFLite's int8 models as edgekd writes them): every op that reads
            quantized values must write quantized values too, which QAT arranges and the
            validator checks. Float ops may still exist in the target's float models.
        float_fallback: ops may run in float between quantized ones; false for integer-only
            accelerators (Ethos-U, TFLite Micro), where the validator flags every float op.
        weight_dtypes, activation_dtypes: the dtypes a recipe may ask for on this target.
    """

    runtime: str = "any"
    weights: TensorRule = field(default_factory=_default_weights)
    activations: TensorRule = field(default_factory=TensorRule)
    ops: dict[str, OpRule] = field(default_factory=dict)
    shared_scales: list[str] = field(default_factory=lambda: ["max_pool", "avg_pool", "reshape"])
    fuse: list[str] = field(default_factory=lambda: ["relu", "relu6"])
    full_integer: bool = False
    float_fallback: bool = True
    weight_dtypes: list[str] = field(default_factory=lambda: ["int8"])
    activation_dtypes: list[str] = field(default_factory=lambda: ["int8"])

    def __post_init__(self):
        for kind in self.ops:
            if kind not in OP_KINDS:
                raise FieldError(f"ops.{kind}", f"unknown op kind{did_you_mean(kind, OP_KINDS)}; "
                                                f"valid kinds: {', '.join(OP_KINDS)}")
        for i, kind in enumerate(self.shared_scales):
            if kind not in OP_KINDS:
                raise FieldError(f"shared_scales.{i}", f"unknown op kind {kind!r}"
                                                       f"{did_you_mean(kind, OP_KINDS)}")
        for i, act in enumerate(self.fuse):
            if act not in FUSABLE:
                raise FieldError(f"fuse.{i}", f"cannot fuse {act!r}; fusable: {', '.join(FUSABLE)}")
        for name, allowed in (("weight_dtypes", WEIGHT_DTYPES), ("activation_dtypes", ACTIVATION_DTYPES)):
            for i, dtype in enumerate(getattr(self, name)):
                if dtype not in allowed:
                    raise FieldError(f"{name}.{i}", f"{dtype!r} is not a {name[:-7]} dtype; "
                                                    f"valid: {', '.join(allowed)}")
        self._check_rule("weights", self.weights, weights=True)
        self._check_rule("activations", self.activations, weights=False)
        for kind, rule in self.ops.items():
            if rule.weights is not None:
                if kind not in WEIGHTED_KINDS:
                    raise FieldError(f"ops.{kind}.weights", f"{kind} has no weights "
                                                            f"(weighted kinds: {', '.join(WEIGHTED_KINDS)})")
                self._check_rule(f"ops.{kind}.weights", rule.weights, weights=True)
            if rule.activations is not None:
                self._check_rule(f"ops.{kind}.activations", rule.activations, weights=False)

    def _check_rule(self, where: str, rule: TensorRule, *, weights: bool) -> None:
        allowed = self.weight_dtypes if weights else self.activation_dtypes
        if rule.dtype not in allowed:
            kind = "weight" if weights else "activation"
            raise FieldError(f"{where}.dtype", f"{rule.dtype} {kind}s are not supported on this target "
                                               f"(its {kind}_dtypes: {', '.join(allowed)})")
        if rule.per_channel and not weights:
            raise FieldError(f"{where}.per_channel", "activations are quantized per tensor")
        if rule.reduce_range and not weights:
            raise FieldError(f"{where}.reduce_range", "applies to weights (the saturating operand), "
                                                      "not activations")

    def weight_rule(self, kind: str) -> TensorRule:
        rule = self.ops.get(kind)
        return rule.weights if rule is not None and rule.weights is not None else self.weights

    def activation_rule(self, kind: str) -> TensorRule:
        rule = self.ops.get(kind)
        return rule.activations if rule is not None and rule.activations is not None else self.activations

    def fixed_output(self, kind: str) -> tuple[float, int] | None:
        rule = self.ops.get(kind)
        if rule is None or rule.output_scale is None:
            return None
        return rule.output_scale, rule.output_zero_point

    def with_weights(self, dtype: str, where: str = "weight_bits") -> QuantScheme:
        """This scheme with every weight rule at ``dtype`` (e.g. int4 for W4A8).

        Raises:
            FieldError: the target does not support ``dtype`` weights.
        """
        if dtype not in self.weight_dtypes:
            raise FieldError(where, f"{dtype} weights are not supported by this target's runtime "
                                    f"({self.runtime}: weight dtypes {', '.join(self.weight_dtypes)}); "
                                    f"choose a target that lists {dtype} in quantization.weight_dtypes")
        data = self.to_dict()
        for rule in [data["weights"]] + [r["weights"] for r in data["ops"].values() if r.get("weights")]:
            rule["dtype"] = dtype
        return QuantScheme.from_dict(data)


__all__ = ["ACTIVATION_DTYPES", "OP_KINDS", "OpRule", "QuantScheme", "TensorRule", "WEIGHT_DTYPES"]
