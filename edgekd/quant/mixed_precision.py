"""Mixed precision from a per-layer sensitivity pass.

Which layers can take the low precision, and which must stay higher? Measured, not guessed:

1. **Sensitivity.** For every conv/linear layer L, quantize L alone at the base precision (all
   other layers float), calibrate it as PTQ does, and measure on the validation split how far
   its outputs move from the float model's: the mean KL divergence KL(p_float || p_L) of the
   softmax outputs (a continuous score, where a few hundred validation images would make
   top-1 accuracy too coarse), plus the top-1 accuracy drop. This is the "quantize one layer"
   analysis of AIMET's per-layer quant analyzer and of Dong et al. 2019 (HAWQ) without the
   Hessian.
2. **Greedy choice.** Quantize every layer; while the calibrated model is more than
   ``max_accuracy_drop`` below the float model, move the most sensitive layer left to the
   higher precision (``float``, or ``int8`` under W4A8) and measure again.

The result is a ``QATConfig.layers`` mapping that QAT and PTQ then simulate and export. The
accuracy checked is the calibrated (PTQ) one: QAT usually recovers more, never less. Given a
``task``, models are called the task's way and "accuracy" is the task's quality metric.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from edgekd.progress import progress
from edgekd.distill.trainer import predict
from edgekd.quant.qat import QATConfig, calibrated_copy, layer_precisions, quantizable_layers


@dataclass
class LayerSensitivity:
    layer: str
    kl: float              # mean KL(p_float || p_quantized) on the validation split, nats
    accuracy_drop: float   # float top-1 minus top-1 with only this layer quantized


@dataclass
class MixedPrecisionResult:
    """The chosen per-layer precisions and how they were found."""

    layers: dict[str, str]
    float_accuracy: float
    accuracy: float                      # calibrated accuracy with ``layers`` applied
    base_accuracy: float                 # calibrated accuracy with every layer quantized
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # (layer raised, accuracy after) per step

    def to_dict(self) -> dict:
        return {"layers": dict(self.layers), "float_accuracy": self.float_accuracy,
                "accuracy": self.accuracy, "base_accuracy": self.base_accuracy,
                "sensitivity": [vars(s) for s in self.sensitivity], "steps": list(self.steps)}

    def summary(self) -> str:
        kept = ", ".join(f"{k}={v}" for k, v in self.layers.items()) or "none"
        return (f"mixed precision: {len(self.layers)} layer(s) kept higher ({kept}); calibrated "
                f"accuracy {100 * self.base_accuracy:.2f}% all quantized -> {100 * self.accuracy:.2f}% "
                f"(float {100 * self.float_accuracy:.2f}%)")


@torch.no_grad()
def _logits(model: nn.Module, x, task=None) -> torch.Tensor:
    return predict(model, x, task=task)


def _accuracy(logits: torch.Tensor, y: torch.Tensor, task=None) -> float:
    """Top-1 accuracy; with a ``task``, its quality metric (what "accuracy" means in this module)."""
    if task is not None:
        return task.metrics(logits.numpy(), y.numpy())[task.quality_metric]
    return (logits.argmax(-1) == y).float().mean().item()


def layer_sensitivity(model: nn.Module, config: QATConfig, batches: Sequence[torch.Tensor],
                      x_val: torch.Tensor, y_val: torch.Tensor,
                      reference: torch.Tensor | None = None, task=None) -> list[LayerSensitivity]:
    """Each layer quantized alone (``config``'s base precision), most sensitive first.

    ``reference``: the float model's logits on ``x_val``, when the caller has them already.
    """
    reference = _logits(model, x_val, task) if reference is None else reference  # (N, K)
    float_acc = _accuracy(reference, y_val, task)
    p_ref = reference.log_softmax(-1)
    layers = quantizable_layers(model)
    fixed = _fixed(model, config)
    result = []
    for layer in progress([p for p in layers if p not in fixed], desc="sensitivity", unit="layer", leave=False):
        alone = {p: "float" for p in layers if p != layer}
        logits = _logits(calibrated_copy(model, _with_layers(config, alone), batches), x_val, task)
        kl = torch.sum(p_ref.exp() * (p_ref - logits.log_softmax(-1)), dim=-1).mean().item()
        result.append(LayerSensitivity(layer, kl, float_acc - _accuracy(logits, y_val, task)))
    return sorted(result, key=lambda s: (s.kl, s.accuracy_drop), reverse=True)


def choose_mixed_precision(model: nn.Module, config: QATConfig, batches: Sequence[torch.Tensor],
                           x_val: torch.Tensor, y_val: torch.Tensor, task=None) -> MixedPrecisionResult:
    """Per-layer precisions that keep the calibrated model within
    ``config.mixed_precision.max_accuracy_drop`` of ``model`` (see the module docstring).

    ``config`` must be resolved (``QATConfig.resolved``); its explicit ``layers`` stay as given.
    """
    options = config.mixed_precision
    model = copy.deepcopy(model).eval()
    reference = _logits(model, x_val, task)
    float_acc = _accuracy(reference, y_val, task)
    sensitivity = layer_sensitivity(model, config, batches, x_val, y_val, reference, task)

    def accuracy(layers: dict[str, str]) -> float:
        return _accuracy(_logits(calibrated_copy(model, _with_layers(config, layers), batches), x_val, task),
                         y_val, task)

    fixed = _fixed(model, config)
    raised: dict[str, str] = {}
    base = current = accuracy(fixed)
    steps = []
    quantized = [p for p in quantizable_layers(model) if fixed.get(p) != "float"]
    for item in sensitivity:  # layers the user fixed were left out of the pass
        if float_acc - current <= options.max_accuracy_drop:
            break
        if options.higher == "float" and len(raised) + 1 >= len(quantized):
            break  # keep at least one layer quantized: the budget cannot be met by quantizing
        raised[item.layer] = options.higher
        current = accuracy({**raised, **fixed})
        steps.append({"layer": item.layer, "precision": options.higher, "accuracy": current})
    return MixedPrecisionResult(raised, float_acc, current, base, sensitivity, steps)


def _fixed(model: nn.Module, config: QATConfig) -> dict[str, str]:
    """{layer path: precision} the user's ``layers`` (paths or globs) fix; the pass keeps them."""
    return layer_precisions(model, config.layers, config.resolved().scheme)


def _with_layers(config: QATConfig, layers: dict[str, str]) -> QATConfig:
    return QATConfig.from_dict({**config.to_dict(), "layers": layers,
                                "mixed_precision": {"enabled": False}})


__all__ = ["LayerSensitivity", "MixedPrecisionResult", "choose_mixed_precision", "layer_sensitivity"]
