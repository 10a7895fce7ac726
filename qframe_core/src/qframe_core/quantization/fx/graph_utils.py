"""Reading fx graphs the same way in every pass: op keys, inputs, quantized regions."""

from __future__ import annotations

import builtins
import operator
from typing import Any, Iterator, Optional

import torch
from torch import fx, nn

from ...lowering import op_display_name

#: calls that read metadata (shapes) rather than produce tensors: never quantized
#: (``getitem`` is not here: on a quantized tuple, e.g. of ``split``, it is a passthrough)
METADATA_OPS: tuple[Any, ...] = (builtins.getattr, "Tensor.size", "Tensor.dim", "Tensor.shape",
                                 builtins.len)


def module_of(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    """The module a ``call_module`` node calls, or the owner of a module ``call_method``."""
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    if node.op == "call_method" and node.args and isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr":
        try:
            return gm.get_submodule(node.args[0].target)
        except AttributeError:
            return None
    return None


def module_name_of(node: fx.Node) -> Optional[str]:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_method" and node.args and isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr":
        return str(node.args[0].target)
    return None


def retarget_module_call(gm: fx.GraphModule, node: fx.Node, name: str) -> None:
    """Make ``node`` call the module registered as ``name`` (a ``call_module`` or a module's ``call_method``)."""
    if node.op == "call_module":
        node.target = name
        return
    with gm.graph.inserting_before(node):
        owner = gm.graph.get_attr(name)
    node.args = (owner, *node.args[1:])


def op_key(gm: fx.GraphModule, node: fx.Node, module_key: Optional[type] = None) -> Any:
    """The lowering-table key of ``node`` (see :mod:`qframe_core.lowering`), None for non-ops.

    ``module_key`` overrides the class used for module calls (convert looks up
    the *float* class prepare recorded).
    """
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return module_key or getattr(mod, "lowering_key", None) or type(mod)
    if node.op == "call_function":
        if node.target is builtins.getattr and len(node.args) == 2 and node.args[1] in ("values", "indices"):
            return f"Tensor.{node.args[1]}"  # the fields of torch.max/min/topk/sort results
        return node.target
    if node.op == "call_method":
        owner = module_of(gm, node)
        if owner is not None and node.target in getattr(owner, "forward_aliases", ()):
            return module_key or getattr(owner, "lowering_key", None) or type(owner)  # ``fused.add(x, r)``
        if owner is not None:
            base = module_key or type(owner)
            return f"{base.__name__}.{node.target}"
        return f"Tensor.{node.target}"
    return None


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """``'layer1.conv' (torch.nn.Conv2d)`` — how errors name a node."""
    name = module_name_of(node) or node.name
    return f"{name!r} ({op_display_name(op_key(gm, node))})"


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """Input nodes of ``node`` in argument order (flattening lists), excluding a method's owner module."""
    args = list(node.args)
    if node.op == "call_method" and args and isinstance(args[0], fx.Node) and args[0].op == "get_attr":
        args = args[1:]
    out: list[fx.Node] = []

    def visit(a: Any) -> None:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)

    visit(args)
    visit(node.kwargs)
    return out


def op_nodes(gm: fx.GraphModule) -> Iterator[fx.Node]:
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_function", "call_method"):
            yield node


#: ops whose result is indices (int64), not quantized codes, when applied to quantized values
INDEX_OPS: tuple[Any, ...] = (torch.argmax, torch.argmin, "Tensor.argmax", "Tensor.argmin", "Tensor.indices")
#: ops returning (values, indices) — with a ``dim`` for max/min; item 1 is the indices
VALUES_INDICES_OPS: tuple[Any, ...] = (torch.max, torch.min, "Tensor.max", "Tensor.min", torch.topk, "Tensor.topk",
                                       torch.sort, "Tensor.sort")


def yields_codes(gm: fx.GraphModule, node: fx.Node) -> bool:
    """False when ``node`` — an op on quantized values — returns indices or booleans rather than codes."""
    key = op_key(gm, node)
    if key in INDEX_OPS:
        return False
    if node.op == "call_module" and getattr(gm.get_submodule(node.target), "quantized_output", True) is False:
        return False
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2 \
            and node.args[1] == 1 and isinstance(node.args[0], fx.Node):
        src = node.args[0]
        return not (op_key(gm, src) in VALUES_INDICES_OPS and (len(src.args) > 1 or "dim" in src.kwargs
                                                               or op_key(gm, src) not in (torch.max, torch.min,
                                                                                          "Tensor.max", "Tensor.min")))
    return True


def quantized_region(gm: fx.GraphModule, is_quant_stub: Any, is_dequant_stub: Any) -> set[fx.Node]:
    """Nodes computing on quantized tensors: from a QuantStub to a DeQuantStub.

    ``is_quant_stub``/``is_dequant_stub`` classify a module.  An op returning indices or booleans
    (``argmax``, a comparison, the indices of ``topk``) belongs to the region — the march must run
    it — but its result is not quantized, so the ops after it do not.
    """
    region: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        if mod is not None and is_quant_stub(mod):
            region.add(node)
            continue
        if mod is not None and is_dequant_stub(mod):
            continue
        if op_key(gm, node) in METADATA_OPS:
            continue
        if any(i in region and yields_codes(gm, i) for i in tensor_inputs(node)):
            region.add(node)
    return region


def scope_of(node: fx.Node) -> str:
    """The qualified name of the module whose forward wrote ``node`` ("" at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    for value in reversed(list(stack.values())):
        path = value[0] if isinstance(value, tuple) else None
        if isinstance(path, str) and path and all(part.isidentifier() or part.isdigit() for part in path.split(".")):
            return path
    return ""


def generated_name(gm: fx.GraphModule, scope: str, stem: str) -> str:
    """The first free ``<scope>._generated_<stem>_N`` (the seeds' naming of generated modules)."""
    existing = {name for name, _ in gm.named_modules()}
    prefix = f"{scope + '.' if scope else ''}_generated_{stem}_"
    i = 0
    while f"{prefix}{i}" in existing:
        i += 1
    return f"{prefix}{i}"


def unique_module_name(gm: fx.GraphModule, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``… — the first name no module of ``gm`` has."""
    existing = {name for name, _ in gm.named_modules()}
    name, i = base, 1
    while name in existing:
        name, i = f"{base}_{i}", i + 1
    return name
