"""Pass 2: fuse operator chains with the march's registered patterns.

Matching (which nodes form a chain) is separate from replacement (one
call of the fused module), as in ``torch.fx.subgraph_rewriter``.  The
patterns are the march plugin's data; this pass knows none.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from torch import fx, nn

from ...errors import MarchNotSetError
from ...lowering import OP_ALIASES, FusionPattern
from ...march import MarchLike, get_march, resolve_march
from ...registry import registry
from .graph_utils import generated_name, module_of, scope_of, tensor_inputs
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


def _fused_name(gm: fx.GraphModule, chain: list[fx.Node]) -> str:
    """Where the fused module lives: the conv's name, or — when an add is fused — the add's
    module (a FloatFunctional's name, or ``_generated_add_N`` as the seeds print)."""
    for n in chain:
        if n.op == "call_method" and module_of(gm, n) is not None:
            return str(n.args[0].target)
        if n.op in ("call_function", "call_method") and n is not chain[0]:
            if any(n.target is f for f in OP_ALIASES["add"]["functions"]) or n.target in OP_ALIASES["add"]["methods"]:
                return generated_name(gm, scope_of(n), "add")
    return str(chain[0].target)


def _replace_chain(gm: fx.GraphModule, chain: list[fx.Node], other: Optional[fx.Node], pattern: FusionPattern) -> None:
    modules = [gm.get_submodule(n.target) if n.op == "call_module" else None for n in chain]
    fused = pattern.fuser(modules, pattern.activation, pattern.has_add)
    head = chain[0]
    name = _fused_name(gm, chain)
    if name != str(head.target):
        fused.qconfig_source = str(head.target)  # qconfigs set for the conv apply to what it became
    if getattr(modules[0], "preserve_qat_mode", False):
        fused.preserve_qat_mode = True  # the seeds: a fused module inherits it from its conv
    for n in chain:
        if n.op == "call_module":  # as the seeds show: absorbed modules become Identity
            gm.add_submodule(str(n.target), nn.Identity())
    gm.add_submodule(name, fused)
    last = chain[-1]
    args = (head.args[0],) if other is None else (head.args[0], other)
    if head.op == "call_module" and name == str(head.target) and other is None:
        # fused at the conv's name: the conv's node calls the fused module, keeping its node name
        # (the graph prints ``conv`` as the seeds' print_tabular shows, not ``conv_1``)
        head.args, head.kwargs = args, {}
        new = head
    else:
        with gm.graph.inserting_before(last):
            new = gm.graph.call_module(name, args=args)
        new.meta = dict(head.meta)
    last.replace_all_uses_with(new)
    owners = [n.args[0] for n in chain if n.op == "call_method" and module_of(gm, n) is not None]
    for n in reversed(chain):
        if n is not new:
            gm.graph.erase_node(n)
    for o in owners:
        if not o.users:
            gm.graph.erase_node(o)


def fuse_graph(gm: fx.GraphModule, march: Optional[str]) -> fx.GraphModule:
    """Apply the fusion patterns of ``march`` (of every installed march when None), longest first."""
    if march is None:
        unique = {p.name: p for m in registry.march_names() for p in registry.fusion_patterns(m)}
        patterns = sorted(unique.values(), key=lambda p: -len(p.sequence))
    else:
        patterns = registry.fusion_patterns(march)
    erased: set[fx.Node] = set()
    calls = Counter(id(m) for m in (module_of(gm, n) for n in gm.graph.nodes) if m is not None)
    # one pass suffices: patterns are tried longest first, and a fused module matches no head
    for node in list(gm.graph.nodes):
        if node in erased or node.op not in ("call_module", "call_function", "call_method"):
            continue
        for pattern in patterns:
            found = match_chain(gm, node, pattern)
            # a module called elsewhere too (a shared op) is left unfused: fusing would replace it
            # with Identity at its other call sites; prepare gives each call its own QAT module instead
            if found is not None and not any(calls[id(module_of(gm, n))] > 1 for n in found[0]
                                             if module_of(gm, n) is not None):
                erased.update(found[0])
                _replace_chain(gm, found[0], found[1], pattern)
                break
    gm.graph.lint()
    gm.recompile()
    gm.meta["qframe_fused_for"] = march
    return gm


def fuse_fx(model: nn.Module, march: Optional[MarchLike] = None) -> fx.GraphModule:
    """Trace ``model`` and fuse conv/linear + BN + add + ReLU chains.

    Returns a GraphModule whose fused modules live at the conv's name, or at
    the add's (``_generated_add_N``) when an add is fused; the absorbed
    modules become ``Identity``.  With no march given or set, every installed
    march's patterns apply (prepare then checks what the chosen march runs).
    """
    gm = symbolic_trace(model)
    if march is None:
        try:
            march = get_march()
        except MarchNotSetError:
            return fuse_graph(gm, None)
    return fuse_graph(gm, resolve_march(march).name)
