"""Eager mode: ``prepare_qat`` and ``convert`` swap modules in the user's own module tree.

The model keeps its class and its ``forward``; only modules change, as in
torch's eager mode.  Which modules, to what, and what the march refuses come
from the same registry records and passes as fx mode: the model is traced
once (without fusing and without turning functions into modules: eager mode
quantizes the modules the user wrote) so that each QAT module is bound to the
modules producing its inputs, which VALIDATION-state simulation and convert
need.  The qconfig comes from ``.qconfig`` attributes, a module inheriting
its parent's.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Optional

from torch import nn

from ..errors import QframeError, UnsupportedOpError
from ..march import MarchLike, resolve_march
from .fx.convert import quantized_modules
from .fx.graph_utils import describe, quantized_region
from .fx.prepare import (
    _bind_inputs,
    _check_and_swap,
    _Problems,
    is_dequant_stub,
    is_quant_stub,
    module_form,
    share_cat_scales,
)
from .fx.qconfig_resolution import QConfigResolver
from .fx.tracer import symbolic_trace

#: where eager prepare_qat records what convert needs (a plain attribute: saved by deepcopy and pickle)
EAGER_META = "_qframe_eager"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _check_single_calls(gm: Any) -> None:
    counts = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    counts.update(str(n.args[0].target) for n in gm.graph.nodes
                  if n.op == "call_method" and n.args and getattr(n.args[0], "op", None) == "get_attr")
    shared = sorted(name for name, c in counts.items() if c > 1)
    if shared:
        raise UnsupportedOpError(
            f"eager mode: module(s) {', '.join(map(repr, shared))} are called more than once in forward; each call "
            f"site needs its own quantization parameters (the seeds: do not call one FloatFunctional or stub "
            f"twice). Give every call its own module instance, or use prepare_qat_fx, which does this for stubs")


def _check_module_forms(gm: Any, march: str) -> None:
    """Functional ops inside the quantized region: fx mode makes them modules, eager mode cannot."""
    problems = _Problems(march)
    for node in quantized_region(gm, is_quant_stub, is_dequant_stub):
        form = module_form(gm, node) if node.op != "call_module" else None
        if form is not None:
            problems.add(describe(gm, node), "eager mode quantizes modules only, and this op is a function call",
                         f"use {form} in the model, or the fx mode (prepare_qat_fx), which makes it a module itself")
    problems.raise_if_any()


def prepare_qat(model: nn.Module, mapping: Optional[dict[type, type]] = None, inplace: bool = False,
                optimize_graph: bool = False, hybrid: bool = False,
                march: Optional[MarchLike] = None) -> nn.Module:
    """Swap the modules of ``model`` that have a qconfig for their QAT forms (eager mode).

    Args:
        model: a float model with QuantStub/DeQuantStub around the quantized part, module-form
            ops only (``FloatFunctional().add``, ``qframe_core.nn.Exp()``…), fused with
            :func:`~qframe_core.quantization.fuse_modules`, and ``.qconfig`` set (a module
            inherits its parent's; ``None`` keeps it float).
        mapping: ``{float class: QAT class}`` overriding the march's choice; a QAT class provides
            ``from_float(module, qconfig, march)``.
        inplace: modify ``model`` instead of a deep copy.
        optimize_graph: cat inputs and output share one scale (see ``prepare_qat_fx``).
        hybrid: not available in eager mode (no graph to insert boundaries into).
        march: overrides the current march.

    Raises:
        UnsupportedOpError: an op the march cannot run, a function call in the quantized
            region, or a module called more than once.
        TraceError: the forward cannot be traced, so inputs cannot be bound to producers.
    """
    if hybrid:
        raise ValueError("prepare_qat(hybrid=True): eager mode cannot insert the CPU/BPU boundaries; place a "
                         "DeQuantStub before and a QuantStub after the float part yourself, or use "
                         "prepare_qat_fx(..., hybrid=True)")
    spec = resolve_march(march)
    if not inplace:
        model = copy.deepcopy(model)
    resolver = QConfigResolver(model, None)
    resolver.check_kinds()
    gm = symbolic_trace(model)  # shares the model's module objects
    _check_single_calls(gm)
    _check_module_forms(gm, spec.name)
    float_ops = _check_and_swap(gm, spec.name, resolver, mapping)
    _bind_inputs(gm, spec.name, float_ops)
    if optimize_graph:
        share_cat_scales(gm, spec.name)
    for name in float_ops:
        _set_module(model, name, gm.get_submodule(name))
    setattr(model, EAGER_META, {"march": spec.name, "float_ops": float_ops})
    return model


def convert(model: nn.Module, inplace: bool = False, march: Optional[MarchLike] = None) -> nn.Module:
    """Replace each QAT module of an eager ``prepare_qat`` model by its integer module.

    ``march`` is accepted for symmetry; the model converts for the march it was prepared for.
    """
    meta = getattr(model, EAGER_META, None)
    if meta is None:
        raise QframeError(f"convert expects a model returned by prepare_qat (eager mode); {type(model).__name__} "
                          f"was not prepared (for fx models use convert_fx)")
    if march is not None and resolve_march(march).name != meta["march"]:
        raise QframeError(f"convert: the model was prepared for march {meta['march']!r}, not "
                          f"{resolve_march(march).name!r}")
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in quantized_modules(model, meta["march"], meta["float_ops"], list(meta["float_ops"])).items():
        _set_module(model, name, module)
    setattr(model, EAGER_META, {**meta, "converted": True})
    return model.cpu().eval()


__all__ = ["convert", "prepare_qat"]
