"""Pass 2: fuse operator chains with the march's registered patterns.

Matching (which nodes form a chain) is separate from replacement (one
call of the fused module), as in ``torch.fx.subgraph_rewriter``.  The
patterns are the march plugin's data; this pass knows none.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import fx, nn

from ...lowering import OP_ALIASES, FusionPattern
from ...march import MarchLike, resolve_march
from ...registry import registry
from .graph_utils import module_of, tensor_inputs
from .tracer import symbolic_trace


def _node_matches(gm: fx.GraphModule, node: fx.Node, matcher: Any) -> bool:
    if isinstance(matcher, type):
        return node.op == "call_module" and isinstance(gm.get_submodule(node.target), matcher)
    alias = OP_ALIASES[matcher]
    if node.op == "call_function":
        return node.target in alias["functions"]
    if node.op == "call_method":
        return node.target in alias["methods"]
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), alias["modules"])
    return False


def match_chain(gm: fx.GraphModule, start: fx.Node, pattern: FusionPattern,
                single_use: bool = True) -> Optional[tuple[list[fx.Node], Optional[fx.Node]]]:
    """The nodes of ``pattern`` starting at ``start`` and the residual input of its add, or None.

    With ``single_use=False`` a chain link may have other users too (it then cannot be
    fused; model checks use this to report fusable-but-unfused chains).
    """
    if not _node_matches(gm, start, pattern.sequence[0]):
        return None
    chain, other = [start], None
    cur = start
    for matcher in pattern.sequence[1:]:
        candidates = [u for u in cur.users if _node_matches(gm, u, matcher)]
        if not candidates or (single_use and len(cur.users) != 1):
            return None
        nxt = candidates[0]
        ins = tensor_inputs(nxt)
        if matcher == "add":
            if len(ins) != 2 or ins[0] is ins[1] or nxt.kwargs:
                return None
            other = ins[1] if ins[0] is cur else ins[0]
        elif not ins or ins[0] is not cur:
            return None
        chain.append(nxt)
        cur = nxt
    return chain, other


def _replace_chain(gm: fx.GraphModule, chain: list[fx.Node], other: Optional[fx.Node], pattern: FusionPattern) -> None:
    modules = [gm.get_submodule(n.target) if n.op == "call_module" else None for n in chain]
    fused = pattern.fuser(modules, pattern.activation, pattern.has_add)
    head = chain[0]
    gm.add_submodule(str(head.target), fused)
    for n in chain[1:]:
        if n.op == "call_module":  # as the seeds show: absorbed modules become Identity
            gm.add_submodule(str(n.target), nn.Identity())
    last = chain[-1]
    args = (head.args[0],) if other is None else (head.args[0], other)
    with gm.graph.inserting_before(last):
        new = gm.graph.call_module(str(head.target), args=args)
    new.meta = dict(head.meta)
    last.replace_all_uses_with(new)
    owners = [n.args[0] for n in chain if n.op == "call_method" and module_of(gm, n) is not None]
    for n in reversed(chain):
        gm.graph.erase_node(n)
    for o in owners:
        if not o.users:
            gm.graph.erase_node(o)


def fuse_graph(gm: fx.GraphModule, march: str) -> fx.GraphModule:
    """Apply the fusion patterns of ``march``, longest first."""
    patterns = registry.fusion_patterns(march)
    erased: set[fx.Node] = set()
    # one pass suffices: patterns are tried longest first, and a fused module matches no head
    for node in list(gm.graph.nodes):
        if node in erased or node.op not in ("call_module", "call_function", "call_method"):
            continue
        for pattern in patterns:
            found = match_chain(gm, node, pattern)
            if found is not None:
                erased.update(found[0])
                _replace_chain(gm, found[0], found[1], pattern)
                break
    gm.graph.lint()
    gm.recompile()
    gm.meta["qframe_fused_for"] = march
    return gm


def fuse_fx(model: nn.Module, march: Optional[MarchLike] = None) -> fx.GraphModule:
    """Trace ``model`` and fuse conv/linear + BN + add + ReLU chains for the march.

    Returns a GraphModule whose fused modules live at the conv's name; the
    absorbed BN/ReLU modules become ``Identity``.
    """
    spec = resolve_march(march)
    gm = symbolic_trace(model)
    return fuse_graph(gm, spec.name)
