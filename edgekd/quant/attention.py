"""Fused attention made explicit, so int8 kernels can compute each of its products.

``F.scaled_dot_product_attention`` (timm's and most transformers' attention) is one call to
torch.fx: nothing inside it can be quantized, its ONNX export is float, and TFLite has no such
kernel. ``decompose_attention`` writes it as the formula it computes (Vaswani et al. 2017):

    scores = (q @ k^T) * scale            scale = 1 / sqrt(d) unless given
    scores = scores + mask                a float mask as given; a boolean one (or is_causal)
                                          as 0 where attended, the dtype's lowest value elsewhere
    out    = softmax(scores, -1) @ v

after which the QAT passes quantize the score and output products, the probabilities and the
masked scores as for any model that spells attention out. Calls with dropout (training) or
grouped-query attention are left fused.
"""

from __future__ import annotations

import inspect
import operator

import torch
from torch import fx

from edgekd.quant.rewrite import rewrite_nodes
from torch.nn import functional as F

FUSED = {F.scaled_dot_product_attention}


def _signature(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):
    """The arguments of ``F.scaled_dot_product_attention`` (its own signature is not introspectable)."""


def decompose_attention(gm: fx.GraphModule) -> int:
    """Rewrite every fused attention call of ``gm`` in place; returns how many."""
    return rewrite_nodes(gm, _spelled_out)


def _spelled_out(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    if node.op != "call_function" or node.target not in FUSED:
        return None
    args = inspect.signature(_signature).bind(*node.args, **node.kwargs)
    args.apply_defaults()
    a = args.arguments
    if (isinstance(a["dropout_p"], fx.Node) or a["dropout_p"] or a["enable_gqa"]
            or isinstance(a["is_causal"], fx.Node)):
        return None
    graph = gm.graph
    q, k, v = a["query"], a["key"], a["value"]
    scores = graph.call_function(operator.matmul, (q, graph.call_method("transpose", (k, -2, -1))))
    scale = a["scale"]
    if scale is None:
        scale = graph.call_function(operator.pow, (graph.call_method("size", (q, -1)), -0.5))
    scores = graph.call_function(operator.mul, (scores, scale))
    mask = a["attn_mask"]
    if a["is_causal"]:  # lower triangle attended: (L, S) from the shapes alone
        ones = graph.call_method("new_ones", (q, (graph.call_method("size", (q, -2)),
                                                  graph.call_method("size", (k, -2)))),
                                 {"dtype": torch.bool})
        causal = graph.call_method("tril", (ones,))
        mask = causal if mask is None else graph.call_function(operator.and_, (causal, mask))
    if mask is not None:
        scores = graph.call_function(operator.add, (scores, graph.call_function(additive_mask, (mask,))))
    probs = graph.call_function(torch.softmax, (scores, -1))
    return graph.call_function(operator.matmul, (probs, v))


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True: attended) as 0 / the lowest float; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    return mask


__all__ = ["decompose_attention"]
