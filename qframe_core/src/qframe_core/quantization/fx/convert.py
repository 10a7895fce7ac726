"""convert_fx: QAT model -> integer model running on the march's kernels.

Each QAT module is replaced by the quantized module its lowering names,
built from :meth:`integer_params`-style methods shared with QAT
simulation.  The graph itself is unchanged: passthrough ops run on the
integer tensors as they are.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Optional

from torch import fx, nn

from ...errors import QframeError
from ...lowering import op_display_name
from ...registry import registry
from .graph_utils import module_name_of, op_nodes
from .layout import keep_channels_last
from .tracer import name_class_after_model


def quantized_modules(model: nn.Module, march: str, float_ops: dict[str, Any],
                      names: Iterable[str]) -> dict[str, nn.Module]:
    """The integer module of each QAT module of ``model`` named in ``names`` (and in ``float_ops``)."""
    new_modules: dict[str, nn.Module] = {}
    for name in names:
        if name in new_modules or name not in float_ops:
            continue
        lowering = registry.lowering(march, float_ops[name])
        if lowering is None or lowering.quantized_module is None:
            raise QframeError(f"{name!r}: march {march!r} no longer lists a lowering for "
                              f"{op_display_name(float_ops[name])}; was the march plugin changed since prepare?")
        qat = model.get_submodule(name)
        if getattr(qat, "preserve_qat_mode", False):
            from ...nn.quantized.preserved import PreservedQAT  # not at import: nn imports the quantization package

            new_modules[name] = PreservedQAT.from_qat(qat)  # kept in QAT form for debugging
        else:
            new_modules[name] = lowering.quantized_module.from_qat(qat)
    return new_modules


def convert_fx(model: fx.GraphModule, convert_custom_config_dict: Optional[dict] = None,
               _remove_qconfig: bool = True, inplace: bool = False) -> fx.GraphModule:
    """Convert a model returned by ``prepare_qat_fx`` (after calibration and/or QAT).

    The result takes float input (its QuantStubs quantize), passes integer
    tensors between ops, and returns float from its DeQuantStubs.  It runs on
    the CPU, in eval mode.

    Args:
        model: the QAT/calibration GraphModule.
        convert_custom_config_dict: ``{"preserved_attributes": [names]}`` (the seeds' argument) sets
            those attributes of ``model`` on the result.
        _remove_qconfig: delete the ``qconfig`` attributes left on the result's modules (the seeds' default).
        inplace: modify ``model`` instead of converting a deep copy.
    """
    custom = {} if convert_custom_config_dict is None else convert_custom_config_dict
    if not isinstance(custom, dict):
        raise TypeError(f"convert_fx: convert_custom_config_dict must be a dict such as "
                        f"{{'preserved_attributes': [...]}}, got {custom!r} (to convert in place, pass inplace=True "
                        f"by keyword)")
    if set(custom) - {"preserved_attributes"}:
        raise ValueError(f"convert_fx: convert_custom_config_dict has unknown keys "
                         f"{sorted(set(custom) - {'preserved_attributes'})}: only 'preserved_attributes' is used")
    preserved = list(custom.get("preserved_attributes", []))
    missing = [a for a in preserved if not hasattr(model, a)]
    if missing:
        raise AttributeError(f"convert_fx: preserved_attributes {missing} are not attributes of the model")
    meta = getattr(model, "meta", {}) if isinstance(model, fx.GraphModule) else {}
    if meta.get("qframe_stage") != "qat":
        raise QframeError("convert_fx expects the GraphModule returned by prepare_qat_fx (it got "
                          f"{type(model).__name__}{' already converted' if meta.get('qframe_stage') else ''})")
    gm = model if inplace else copy.deepcopy(model)
    name_class_after_model(gm)  # the copy is a "GraphModule": the float model's class name again (meta keeps it)
    names = [n for n in (module_name_of(node) for node in op_nodes(gm)) if n is not None]
    new_modules = quantized_modules(gm, gm.meta["qframe_march"], gm.meta["qframe_float_ops"], names)
    for name, mod in new_modules.items():
        gm.add_submodule(name, mod)
    keep_channels_last(gm)
    for sub in list(gm.modules()):
        if sub is not gm and isinstance(sub, fx.GraphModule) and sub.meta.get("qframe_stage") == "qat":
            convert_fx(sub, inplace=True)  # a sub-model prepared for an fx_wrap-ed method
    gm.meta["qframe_stage"] = "quantized"
    for attr in preserved:
        setattr(gm, attr, getattr(model, attr))
    if _remove_qconfig:
        for sub in gm.modules():
            if "qconfig" in sub.__dict__:
                del sub.qconfig
    gm.recompile()
    return gm.cpu().eval()
