"""The ``torch.export`` route: a model ``torch.fx`` cannot trace, as a graph QAT can work on.

``torch.export.export(model, example, strict=False)`` traces at the ATen level (TorchDynamo's
tracer in non-strict mode runs the Python as it is, so code fx's proxies trip over, such as a
real tensor's method called with traced sizes or ``torch.tensor`` of a shape, goes through).
``ExportedProgram.module()`` then gives a ``GraphModule`` whose nodes are ATen operators
(``aten.conv2d.default``, ``aten.add.Tensor``) reading parameters by ``get_attr``, with each
parameter under its original module path in empty container modules.

``lower_to_torch`` turns that graph into the one the QAT passes read, the one fx's own tracer
gives: convolution, linear, batch norm and embedding calls become ``nn.Conv2d`` / ``nn.Linear``
/ ``nn.BatchNorm2d`` / ``nn.Embedding`` modules at their original path (so forward hooks and
``qat.layers`` find them by name), and the ATen operators QAT recognises become the torch
functions it knows (``aten.add.Tensor`` -> ``operator.add``, ``aten.hardtanh(x, 0, 6)`` ->
``F.relu6``). Operators it does not map stay ATen calls: they run, export to ONNX, and are
treated as float ops.

Like every trace, the graph is the model at the example's shapes where Python read them, and a
branch on tensor values is refused (``torch.export`` raises a data-dependent guard error).
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn
from torch.fx.proxy import TraceError
from torch.nn import functional as F

aten = torch.ops.aten

# ATen operator -> the torch callable the QAT passes recognise (same positional arguments)
SAME_ARGS = {
    aten.add.Tensor: operator.add, aten.sub.Tensor: operator.sub, aten.mul.Tensor: operator.mul,
    aten.div.Tensor: operator.truediv, aten.matmul.default: torch.matmul, aten.bmm.default: torch.bmm,
    aten.relu.default: torch.relu, aten.relu_.default: torch.relu, aten.sigmoid.default: torch.sigmoid,
    aten.tanh.default: torch.tanh, aten.silu.default: F.silu, aten.silu_.default: F.silu,
    aten.hardswish.default: F.hardswish, aten.hardswish_.default: F.hardswish,
    aten.hardsigmoid.default: F.hardsigmoid, aten.gelu.default: F.gelu,
    aten.leaky_relu.default: F.leaky_relu, aten.softmax.int: torch.softmax,
    aten.cat.default: torch.cat, aten.mean.dim: torch.mean, aten.mean.default: torch.mean,
    aten.view.default: torch.reshape, aten.reshape.default: torch.reshape,
    aten.flatten.using_ints: torch.flatten, aten.permute.default: torch.permute,
    aten.transpose.int: torch.transpose, aten.chunk.default: torch.chunk,
    aten.split.Tensor: torch.split, aten.split_with_sizes.default: torch.split,
    aten.unbind.int: torch.unbind, aten.max_pool2d.default: F.max_pool2d,
    aten.avg_pool2d.default: F.avg_pool2d, aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    aten.layer_norm.default: F.layer_norm, aten.group_norm.default: F.group_norm,
    aten.scaled_dot_product_attention.default: F.scaled_dot_product_attention,
}
PASS_THROUGH = {aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default}


def export_graph(model: nn.Module, example: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """``model`` traced by ``torch.export`` and lowered (see the module docstring)."""
    batch = {0: torch.export.Dim.AUTO}  # the batch stays free where the model lets it
    dynamic = tuple(batch if isinstance(x, torch.Tensor) and x.dim() else None for x in example)
    program = torch.export.export(model, tuple(example), dynamic_shapes=dynamic, strict=False)
    exported = program.module()
    out_spec = exported._out_spec
    # a plain GraphModule (the exported one refuses train()/eval()) called with the inputs as
    # they are: fx's default calling convention instead of the exporter's pytree one
    gm = fx.GraphModule(exported, exported.graph, type(model).__name__)
    gm.graph._codegen = fx.graph.CodeGen()
    for node in [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        gm.graph.erase_node(node)  # the exporter's shape guards: a closure that cannot be pickled
    gm._tracer_cls = gm.graph._tracer_cls = None  # unpickling re-traces the code with fx's own tracer
    for attribute in ("_in_spec", "_out_spec"):  # the exporter's calling convention, no longer used
        gm.__dict__.pop(attribute, None)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    values = output.args[0]
    if out_spec.is_leaf():
        output.args = (values[0],)
    elif out_spec.type in (tuple, list) and all(child.is_leaf() for child in out_spec.children_specs):
        output.args = (tuple(values),)
    else:
        raise TraceError(f"the torch.export route takes models that return a tensor or a tuple of "
                         f"tensors; {type(model).__name__} returns {out_spec.type.__name__}")
    lower_to_torch(gm)
    return gm


def lower_to_torch(gm: fx.GraphModule) -> None:
    """Rewrite an exported ATen graph in place into torch modules and functions (see above)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in PASS_THROUGH:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif node.target in LAYERS:
            LAYERS[node.target](gm, node)
        elif node.target == aten.hardtanh.default and tuple(node.args[1:3]) == (0.0, 6.0):
            node.target, node.args = F.relu6, node.args[:1]
        elif node.target == aten._softmax.default:  # (x, dim, half_to_float)
            node.target, node.args = torch.softmax, node.args[:2]
        elif node.target in SAME_ARGS:
            node.target = SAME_ARGS[node.target]
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()


def _owner(gm: fx.GraphModule, weight: fx.Node) -> tuple[str, nn.Module] | None:
    """The container module the exporter put ``weight`` (a ``get_attr``) in, when it holds
    nothing but that layer's tensors (so a real layer can take its place)."""
    if not isinstance(weight, fx.Node) or weight.op != "get_attr" or "." not in weight.target:
        return None
    path = weight.target.rpartition(".")[0]
    owner = gm.get_submodule(path)
    if type(owner) is not nn.Module or list(owner.children()):
        return None
    return path, owner


def _replace(gm: fx.GraphModule, node: fx.Node, path: str, layer: nn.Module, args: tuple) -> None:
    gm.set_submodule(path, layer)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(path, args)
    call.meta = dict(node.meta)  # (the exporter's fake value: a batch norm after it reads its rank)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)


def _tensor(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    """The parameter or buffer a ``get_attr`` node reads."""
    if node is None:
        return None
    module, _, name = node.target.rpartition(".")
    return getattr(gm.get_submodule(module), name)


def _rank(node) -> int | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None  # the exporter's fake tensor
    return value.dim() if isinstance(value, torch.Tensor) else None


def _conv(gm: fx.GraphModule, node: fx.Node) -> None:
    """``aten.conv2d(x, weight, bias, stride, padding, dilation, groups)`` (defaults omitted)."""
    x, w, b = (list(node.args) + [None])[:3]
    given, defaults = list(node.args[3:7]), [1, 0, 1, 1]
    stride, padding, dilation, groups = given + defaults[len(given):]
    owner, weight = _owner(gm, w), _tensor(gm, w)
    if owner is None or weight.dim() != 4:
        node.target = F.conv2d  # a convolution fx would have traced as a function too
        return
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride, padding,
                     dilation, groups, b is not None)
    conv.weight, conv.bias = weight, _tensor(gm, b)
    _replace(gm, node, owner[0], conv, (x,))


def _linear(gm: fx.GraphModule, node: fx.Node) -> None:
    x, w, b = (list(node.args) + [None])[:3]
    owner, weight = _owner(gm, w), _tensor(gm, w)
    if owner is None:
        node.target = F.linear
        return
    linear = nn.Linear(weight.shape[1], weight.shape[0], b is not None)
    linear.weight, linear.bias = weight, _tensor(gm, b)
    _replace(gm, node, owner[0], linear, (x,))


BATCH_NORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _batch_norm(gm: fx.GraphModule, node: fx.Node) -> None:
    """``aten.batch_norm(x, weight, bias, mean, var, training, momentum, eps, cudnn)``, in eval."""
    x, w, b, mean, var, training, momentum, eps = node.args[:8]
    owner = _owner(gm, mean)
    if owner is None or training or w is None or _rank(x) not in BATCH_NORMS:
        node.target, node.args = F.batch_norm, (x, mean, var, w, b, training, momentum, eps)
        return
    weight = _tensor(gm, w)
    bn = BATCH_NORMS[_rank(x)](weight.shape[0], eps=eps, momentum=momentum).eval()
    bn.weight, bn.bias = weight, _tensor(gm, b)
    bn.running_mean, bn.running_var = _tensor(gm, mean), _tensor(gm, var)
    _replace(gm, node, owner[0], bn, (x,))


def _embedding(gm: fx.GraphModule, node: fx.Node) -> None:
    w, ids = node.args[:2]
    owner, weight = _owner(gm, w), _tensor(gm, w)
    if owner is None:
        node.target, node.args = F.embedding, (ids, w)
        return
    embedding = nn.Embedding(*weight.shape)
    embedding.weight = weight
    _replace(gm, node, owner[0], embedding, (ids,))


LAYERS = {aten.conv2d.default: _conv, aten.linear.default: _linear, aten.batch_norm.default: _batch_norm,
          aten.embedding.default: _embedding}

__all__ = ["export_graph", "lower_to_torch"]
