"""Node-by-node graph rewrites: one loop for every pass that spells a fused op out (attention,
LayerNorm) so its steps can be quantized."""

from __future__ import annotations

from collections.abc import Callable

from torch import fx


def rewrite_nodes(gm: fx.GraphModule, rewrite: Callable[[fx.GraphModule, fx.Node], fx.Node | None]) -> int:
    """Replace each node for which ``rewrite(gm, node)`` (called with new nodes inserted before
    ``node``) returns the value computing it; lint and recompile when any was. Returns how many."""
    done = 0
    for node in list(gm.graph.nodes):
        with gm.graph.inserting_before(node):
            out = rewrite(gm, node)
        if out is None:
            continue
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        done += 1
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


__all__ = ["rewrite_nodes"]
