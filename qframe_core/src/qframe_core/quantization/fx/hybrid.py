"""Hybrid models: ops the march cannot run (or that the user sends to the CPU) stay float.

This pass runs before the op-table check.  It classifies every op as BPU
(the march lowers it and it has a qconfig) or CPU (unsupported, or named in
``hybrid_dict``), then inserts the boundaries, named as the seeds print them:

* a CPU op fed by a quantized value gets a ``DeQuantStub`` before it:
  ``<cpu op>_input_dequant``;
* a BPU op fed by the float output of a CPU op gets a quantizing stub on that
  input: ``<producer>_activation_post_process`` (shared by all its BPU users),
  with the consumer's activation qconfig.

After that the ordinary region rules apply: everything between a (possibly
inserted) QuantStub and a DeQuantStub is quantized, everything else float.
Values after a user's DeQuantStub stay float.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import fx, nn

from ...lowering import LoweringKind
from ...registry import registry
from ..stubs import DeQuantStub, QuantStub
from .graph_utils import METADATA_OPS, module_name_of, module_of, op_key, tensor_inputs, unique_module_name
from .qconfig_resolution import QConfigResolver

_Q, _F_USER, _F_CPU = "quantized", "float", "float-from-cpu"


def _forced_cpu(node: fx.Node, name: Optional[str], mod: Optional[nn.Module], hybrid_dict: dict) -> bool:
    """Named in ``hybrid_dict``, itself or through a module whose forward contains it."""
    names = list(hybrid_dict.get("module_name", []))
    types = tuple(hybrid_dict.get("module_type", []))
    enclosing = [v for v in (node.meta.get("nn_module_stack") or {}).values() if isinstance(v, tuple)]
    paths = [p for p, _ in enclosing] + ([name] if name is not None else [])
    if any(p == n or p.startswith(n + ".") for p in paths for n in names):
        return True
    if not types:
        return False
    return (mod is not None and isinstance(mod, types)) or any(
        isinstance(t, type) and issubclass(t, types) for _, t in enclosing)


def _plan(gm: fx.GraphModule, march: str, resolver: QConfigResolver, hybrid_dict: dict, inserted: set[str]):
    """Classify every op; return (cpu op names, producers to quantize -> qconfig, (cpu op, input) to dequantize)."""
    from .prepare import is_dequant_stub, is_quant_stub

    kind: dict[fx.Node, str] = {}
    cpu_ops: list[str] = []
    quantize_after: dict[fx.Node, Any] = {}
    dequant_before: list[tuple[fx.Node, fx.Node]] = []
    origin: dict[fx.Node, fx.Node] = {}  # float value -> the CPU op that produced it (through passthroughs)
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            kind[node] = _F_USER
            continue
        ins = tensor_inputs(node)
        mod, name = module_of(gm, node), module_name_of(node)
        key = op_key(gm, node)
        if mod is not None and is_quant_stub(mod):
            kind[node] = _Q
            continue
        if mod is not None and is_dequant_stub(mod):
            kind[node] = _F_CPU if name in inserted else _F_USER  # an inserted boundary feeds a CPU op
            continue
        if key in METADATA_OPS:
            kind[node] = _F_USER
            continue
        lowering = registry.lowering(march, key)
        in_kinds = [kind.get(i, _F_USER) for i in ins]
        qconfig = resolver.qconfig_for(name, mod) if name is not None else resolver.global_qconfig
        on_bpu = (lowering is not None and not _forced_cpu(node, name, mod, hybrid_dict)
                  and (lowering.kind is LoweringKind.PASSTHROUGH
                       or (lowering.kind is LoweringKind.MODULE and qconfig is not None)))
        if on_bpu and lowering.kind is LoweringKind.PASSTHROUGH and (not in_kinds or in_kinds[0] != _Q):
            kind[node] = in_kinds[0] if in_kinds else _F_USER  # a passthrough on a float value stays float
            if kind[node] == _F_CPU:
                origin[node] = origin.get(ins[0], ins[0])
            continue
        if on_bpu and lowering.kind is LoweringKind.PASSTHROUGH:
            kind[node] = _Q
            continue
        if on_bpu:
            if _Q not in in_kinds and _F_CPU not in in_kinds:
                kind[node] = _F_USER  # after the user's DeQuantStub: stays float
                continue
            kind[node] = _Q
            for i, k in zip(ins, in_kinds):
                if k != _Q:
                    producer = origin.get(i, i)
                    quantize_after.setdefault(producer, (qconfig, name))
            continue
        kind[node] = _F_CPU if (_Q in in_kinds or _F_CPU in in_kinds) else _F_USER
        if kind[node] == _F_CPU:
            cpu_ops.append(name or node.name)
        dequant_before += [(node, i) for i, k in zip(ins, in_kinds) if k == _Q]
    return cpu_ops, quantize_after, dequant_before


def _quantizing_qconfig(gm: fx.GraphModule, producer: fx.Node, consumer_qconfig: Any, consumer: str,
                        resolver: QConfigResolver) -> Any:
    """The seeds: a CPU op's qconfig quantizes its output for the BPU ops after it (else the consumer's)."""
    name = module_name_of(producer)
    own = resolver.qconfig_for(name, module_of(gm, producer)) if name is not None else resolver.global_qconfig
    for q in (own, consumer_qconfig):
        if q is not None and q.activation is not None:
            return q
    raise ValueError(f"hybrid: the float output of {producer.name!r} feeds {consumer!r} on the march, but neither "
                     f"has an activation qconfig to quantize it with; give {producer.name!r} a qconfig")


def insert_hybrid_boundaries(gm: fx.GraphModule, march: str, resolver: QConfigResolver,
                             hybrid_dict: Optional[dict]) -> list[str]:
    """Insert the stubs of a hybrid model; return the names of the ops left on the CPU."""
    hybrid_dict = dict(hybrid_dict or {})
    unknown = set(hybrid_dict) - {"module_name", "module_type"}
    if unknown:
        raise ValueError(f"hybrid_dict has unknown keys {sorted(unknown)}: use 'module_name' and 'module_type'")
    # inserting a quantizing stub can turn a passthrough's output quantized, which may need a dequant
    # before a CPU op further on: plan and insert until nothing changes
    inserted: set[str] = set()
    cpu_ops: list[str] = []
    for _ in range(8):
        found, quantize_after, dequant_before = _plan(gm, march, resolver, hybrid_dict, inserted)
        cpu_ops += [n for n in found if n not in cpu_ops]
        if not quantize_after and not dequant_before:
            break
        for producer, (qconfig, consumer) in quantize_after.items():
            stub_name = unique_module_name(gm, f"{producer.name}_activation_post_process")
            gm.add_submodule(stub_name, QuantStub())
            resolver.own[stub_name] = _quantizing_qconfig(gm, producer, qconfig, consumer, resolver)
            with gm.graph.inserting_after(producer):
                stub = gm.graph.call_module(stub_name, (producer,))
            for user in list(producer.users):
                if user is not stub:
                    user.replace_input_with(producer, stub)
        for cpu_node, value in dequant_before:
            stub_name = unique_module_name(gm, f"{cpu_node.name}_input_dequant")
            inserted.add(stub_name)
            gm.add_submodule(stub_name, DeQuantStub())
            with gm.graph.inserting_before(cpu_node):
                stub = gm.graph.call_module(stub_name, (value,))
            cpu_node.replace_input_with(value, stub)
    gm.graph.lint()
    gm.recompile()
    return cpu_ops
