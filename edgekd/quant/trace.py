"""Trace a model into a ``torch.fx`` graph for QAT, with its real shapes at hand where it needs them.

``fx.symbolic_trace`` runs ``forward`` on symbolic values, so Python that looks at a tensor fails
("symbolically traced variables cannot be used as inputs to control flow", "Proxy object cannot
be iterated"): YOLO's C2f block does ``list(x.chunk(2, 1))``, its Detect head
``if self.shape != shape`` and ``b, c, h, w = feats[i].shape`` in a loop. ``trace`` first tries the
plain tracer; when that fails and an example input is given, ``ShapeTracer`` traces again while
running the model on the example: every node carries its concrete value, so Python that asks for a
length, an iteration or a truth value gets the real one (the graph is the model as it runs at the
example's shapes, as ``torch.onnx.export``'s tracing records it too). Tensor arithmetic on shapes
stays in the graph (``x.shape[2] * 2`` is a node, so the batch stays dynamic); only what Python
itself consumes (``len``, ``bool``, ``int``, iteration) is fixed at trace time.

A decision on tensor *values* (``if x.max() > 1``) is refused, never baked in: the graph would
silently take one branch for every input. Such code, or anything else that cannot be traced,
belongs in a module named in ``leaf_modules`` (module paths, globs or class names): it is called
as one opaque op, and its layers stay float.

Where neither fx tracer can follow the Python (a real tensor's method called with traced sizes,
C++ argument parsing that proxies cannot pass), ``torch.export`` traces it at the ATen level and
``edgekd.quant.aten`` lowers that graph back into torch layers and functions (``tracer``).
"""

from __future__ import annotations

import fnmatch
import inspect
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.proxy import Attribute, TraceError


TRACERS = ("auto", "fx", "export")


def trace(model: nn.Module, example: tuple[torch.Tensor, ...] | None = None,
          leaf_modules: Sequence[str] = (), tracer: str = "auto") -> fx.GraphModule:
    """A GraphModule of ``model``.

    ``tracer``: "fx" tries the plain fx trace, then (with ``example``) the shape-aware one;
    "export" uses ``torch.export`` (``edgekd.quant.aten``; needs ``example``; leaf modules do
    not apply); "auto" tries fx, then ``torch.export`` when fx cannot trace the model. Raises
    ``TraceError`` naming what each route said.
    """
    if tracer not in TRACERS:
        raise ValueError(f"tracer must be one of {', '.join(TRACERS)}, got {tracer!r}")
    if tracer == "export":
        if example is None:
            raise TraceError("the torch.export route needs an example input")
        from edgekd.quant.aten import export_graph

        return export_graph(model, example)
    fixed = _unfed_defaults(model, example)
    try:
        return fx.GraphModule(model, LeafTracer(leaf_modules).trace(model, fixed), type(model).__name__)
    except Exception:  # fx raises many types for untraceable Python
        if example is None:
            raise
    try:
        with torch.no_grad():
            graph = ShapeTracer(example, leaf_modules).trace(model, fixed)
        graph._tracer_cls = LeafTracer  # unpickling re-traces the generated code: no example needed
        return fx.GraphModule(model, graph, type(model).__name__)
    except Exception as err:
        if tracer == "fx":
            raise
        fx_error = err
    from edgekd.quant.aten import export_graph

    try:
        return export_graph(model, example)
    except Exception as err:
        raise TraceError(f"torch.fx: {type(fx_error).__name__}: {_first_line(fx_error)}; torch.export: "
                         f"{type(err).__name__}: {_first_line(err)}") from None


def _unfed_defaults(model: nn.Module, example) -> dict[str, Any]:
    """forward()'s optional arguments the example does not fill (timm's ``attn_mask=None``,
    ``is_causal=False``), fixed at their defaults: traced as inputs, they would reach the graph
    as tensors (an ONNX export then passes ``is_causal`` as one). Without an example, none."""
    if example is None:  # which arguments a caller passes is unknown: all stay inputs
        return {}
    params = list(inspect.signature(model.forward).parameters.values())
    return {p.name: p.default for p in params[len(example):]
            if p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


class LeafTracer(fx.Tracer):
    """fx's tracer, with the user's ``leaf_modules`` (paths, globs or class names) kept whole."""

    def __init__(self, leaf_modules: Sequence[str] = ()):
        super().__init__()
        self.leaf_patterns = list(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if any(fnmatch.fnmatchcase(module_qualified_name, p) or type(m).__name__ == p for p in self.leaf_patterns):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class ShapeTracer(LeafTracer):
    """Traces while running the model on ``example``; each node's concrete value is kept."""

    # a buffer read in forward is a node too (BERT's ``self.token_type_ids.expand(batch, length)``):
    # a plain tensor method called with traced sizes fails in torch's argument parser
    proxy_buffer_attributes = True

    def __init__(self, example: tuple[torch.Tensor, ...], leaf_modules: Sequence[str] = ()):
        super().__init__(leaf_modules)
        self.example = list(example)
        self.values: dict[fx.Node, Any] = {}
        self._running = 0  # > 0 while a node's value is computed: module calls then just run

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if self._running:  # fx patches nn.Module.__call__ while tracing; a concrete call runs as is
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict):
        if self._running:  # and so is nn.Module.__getattr__: a concrete call reads real parameters
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self._running += 1
        try:
            self.values[proxy.node] = self._run(kind, target, args, kwargs)
        finally:
            self._running -= 1
        return proxy

    def _run(self, kind: str, target, args, kwargs) -> Any:
        if kind == "placeholder":
            if not self.example:
                raise TraceError(f"forward() takes more inputs than the example gives (at {target!r})")
            return self.example.pop(0)
        if kind == "get_attr":
            return operator.attrgetter(target)(self.root)
        if kind == "output":
            return None
        args, kwargs = fx.node.map_aggregate((args, kwargs), self.value)
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        return self.root.get_submodule(target)(*args, **kwargs)  # call_module

    def value(self, x: Any) -> Any:
        """The concrete value of a proxy (anything else as it is)."""
        return self.values[x.node] if isinstance(x, fx.Proxy) else x

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = self.value(obj)
        if isinstance(value, torch.Tensor):
            raise TraceError(f"forward() branches on the values of tensor {obj.node.name!r} (data-dependent "
                             f"control flow), which one trace cannot follow")
        return bool(value)

    def iter(self, obj: fx.Proxy):
        return iter([obj[i] for i in range(len(self.value(obj)))])


class _Concrete:
    """What Python asks of a traced value, answered from the example run."""

    tracer: ShapeTracer

    def __len__(self) -> int:
        return len(self.tracer.value(self))

    def __iter__(self):
        return self.tracer.iter(self)

    def __bool__(self) -> bool:
        return self.tracer.to_bool(self)

    def __int__(self) -> int:
        return int(self.tracer.value(self))

    def __index__(self) -> int:
        return operator.index(self.tracer.value(self))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self.tracer.value(self), name, None)
        if isinstance(value, (torch.device, torch.dtype, str, bool)):
            return value  # a constant of the trace (``torch.autocast(x.device.type)``), not a value in the graph
        return ConcreteAttribute(self, name)


class ConcreteProxy(_Concrete, fx.Proxy):
    pass


class ConcreteAttribute(_Concrete, Attribute):
    pass


__all__ = ["LeafTracer", "ShapeTracer", "trace"]
