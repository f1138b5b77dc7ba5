"""Rewrite a traced model into the torch.nn layers QAT knows, so real models quantize like edgekd's.

``torch.fx`` traces into every module that is not from ``torch.nn``, so the layers a model zoo
defines reach the graph as functions on their parameters: timm's ``BatchNormAct2d`` (a
``BatchNorm2d`` subclass that also applies its activation) becomes ``F.batch_norm`` on
``get_attr`` buffers followed by its ``drop``/``act`` submodules, timm's ``Linear`` head becomes
``F.linear``, ``Conv2dSame`` a pad and ``F.conv2d``. Left so, no BatchNorm is folded (a float
BatchNormalization after every quantized conv: int8 slower than float, no int8 TFLite) and the
head is never quantized.

``normalize(gm, original)`` turns each such call back into the ``torch.nn`` module over the same
parameters, placed at its owner's module path (``blocks.0.bn1``: forward hooks by path keep
working; the owner's own submodules, such as ``bn1.act``, stay under it), and drops what stands
between a layer and its activation without computing anything: ``nn.Identity`` placeholders
(timm's ``drop_block``, ``aa``) and ``torch._assert`` shape checks, whose extra use of the conv
output would otherwise keep the BatchNorm from folding and the activation from fusing.
"""

from __future__ import annotations

import inspect
import operator

import torch
from torch import fx, nn

BATCHNORM_BASES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ASSERTS = {torch._assert}


def normalize(gm: fx.GraphModule, original: nn.Module) -> list[str]:
    """Rewrite ``gm`` (traced from ``original``) in place; returns the module paths made into
    ``torch.nn`` layers (for the log)."""
    made = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in ASSERTS:
            gm.graph.erase_node(node)
            continue
        if node.target not in FUNCTIONAL_LAYERS:
            continue
        signature, build = FUNCTIONAL_LAYERS[node.target]
        args = inspect.signature(signature).bind(*node.args, **node.kwargs).arguments
        params = {k: _attr(gm, v) for k, v in args.items() if k != "input"}
        if any(p is _NOT_AN_ATTR for p in params.values()):
            continue  # computed weights (a functional layer of the model's own making) stay as they are
        owner = _owner(node, args)
        if owner is None or not isinstance(_original(original, owner), OWNERS[node.target]):
            continue  # a weight another kind of module owns (a tied embedding) is left as it is
        module = build(params, original, owner)
        if module is None:
            continue
        _place(gm, owner, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(owner, (args["input"],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        made.append(owner)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()  # the get_attr nodes and shape checks left without users
    gm.graph.lint()
    gm.recompile()
    return made


_NOT_AN_ATTR = object()


def _attr(gm: fx.GraphModule, value):
    """The parameter or buffer a ``get_attr`` node reads; plain values (flags, eps, None) as they are."""
    if isinstance(value, fx.Node):
        return operator.attrgetter(value.target)(gm) if value.op == "get_attr" else _NOT_AN_ATTR
    return value


def _owner(node: fx.Node, args: dict) -> str | None:
    """The module path that owns the layer's weight (``blocks.0.bn1`` for ``blocks.0.bn1.weight``)."""
    key = "weight" if isinstance(args.get("weight"), fx.Node) else "running_mean"
    source = args.get(key)
    if not isinstance(source, fx.Node):
        return None
    owner, _, _ = source.target.rpartition(".")
    return owner or None


def _place(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path``, keeping the submodules the previous one held there."""
    try:
        previous = gm.get_submodule(path)
    except AttributeError:
        previous = None
    if previous is not None:
        for name, child in previous.named_children():
            module.add_module(name, child)
    gm.set_submodule(path, module)


def _original(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _batch_norm(p: dict, model: nn.Module, path: str) -> nn.Module | None:
    mean, var = p.get("running_mean"), p.get("running_var")
    if p.get("training") or not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None  # batch statistics in eval: not a foldable BatchNorm
    source = _original(model, path)
    cls = next((c for c in BATCHNORM_BASES if isinstance(source, c)), nn.BatchNorm2d)
    weight, bias = p.get("weight"), p.get("bias")
    bn = cls(mean.numel(), eps=p.get("eps", 1e-5), affine=weight is not None)
    bn.running_mean, bn.running_var = mean, var
    if weight is not None:
        bn.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach().clone())
        bn.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(
            bias.detach().clone() if bias is not None else torch.zeros_like(mean))
    return bn.eval()


def _linear(p: dict, model: nn.Module, path: str) -> nn.Module:
    weight, bias = p["weight"], p.get("bias")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer


def _conv2d(p: dict, model: nn.Module, path: str) -> nn.Module | None:
    weight, bias = p["weight"], p.get("bias")
    padding = p.get("padding", 0)
    if isinstance(padding, str) and padding not in ("valid", "same"):
        return None
    groups = p.get("groups", 1)
    layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=p.get("stride", 1),
                      padding=padding, dilation=p.get("dilation", 1), groups=groups, bias=bias is not None)
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer


# function -> (its signature, to bind the traced call's arguments; the module it becomes)
FUNCTIONAL_LAYERS = {
    nn.functional.batch_norm: (nn.functional.batch_norm, _batch_norm),
    nn.functional.linear: (lambda input, weight, bias=None: None, _linear),  # a builtin: no signature
    nn.functional.conv2d: (lambda input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1: None,
                           _conv2d),
}

# what the module owning the parameters must be (a subclass of): only a layer's own call is remade
OWNERS = {nn.functional.batch_norm: nn.modules.batchnorm._BatchNorm, nn.functional.linear: nn.Linear,
          nn.functional.conv2d: nn.Conv2d}

__all__ = ["normalize"]
