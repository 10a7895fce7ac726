"""check_qat_model: structure and qconfig checks of a calibration/QAT model (the seeds' model check).

Reports, as the seeds' ``check_qat_model`` does:

1. chains that a fusion pattern of the march could have fused but did not
   (e.g. a conv whose output is also used elsewhere, followed by a ReLU);
2. how many times each module runs on the example input (0 = dead, >1 = shared);
3. each layer's output quantization (input dtype, output dtype, channel axis, observer);
4. each weight's quantization;
5. abnormal settings worth a look (a model-output conv/linear without a
   high-precision output, shared or unused modules).

The model is checked on a deep copy, so observers of the caller's model are
not touched.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Optional

import attrs
import torch
from tabulate import tabulate
from torch import fx, nn

from qframe_core.dtype import qint32
from qframe_core.errors import QframeError
from qframe_core.quantization.fake_quantize import FakeQuantize
from qframe_core.quantization.fx.fuse import match_chain
from qframe_core.quantization.fx.graph_utils import module_name_of, module_of, op_nodes
from qframe_core.quantization.fx.prepare import is_dequant_stub
from qframe_core.registry import registry


@attrs.frozen
class CheckResult:
    """What :func:`check_qat_model` found (each list holds table rows)."""

    unfused: list[tuple[str, str]]
    call_counts: dict[str, int]
    out_qconfigs: list[tuple]
    weight_qconfigs: list[tuple]
    hints: list[str]


def _observer_name(fq: Optional[FakeQuantize]) -> str:
    return "" if fq is None else type(fq.activation_post_process).__name__ + (" (fixed scale)" if fq.fixed_scale else "")


def _output_dtype(mod: nn.Module) -> str:
    """The dtype ``mod`` outputs: its fake-quantize's; for an op without one (interpolate, pooling, …) its
    input's; qint32 for a high-precision output."""
    while not hasattr(mod, "activation_post_process") and getattr(mod, "_input_producers", None):
        mod = mod._input_producers[0]
    fq = getattr(mod, "activation_post_process", None)
    return str(qint32) if fq is None else str(fq.dtype)


def _fq_row(name: str, mod: nn.Module, in_dtype: str) -> tuple:
    if type(mod).__name__ == "DeQuantStub":
        return (name, type(mod).__name__, in_dtype, "torch.float32", "qconfig = None", "")
    if not hasattr(mod, "activation_post_process"):
        return (name, type(mod).__name__, in_dtype, in_dtype, "qconfig = None", "")
    fq = mod.activation_post_process
    if fq is None:
        return (name, type(mod).__name__, in_dtype, str(qint32), "-", "high precision (accumulator)")
    return (name, type(mod).__name__, in_dtype, str(fq.dtype), -1 if fq.ch_axis is None else fq.ch_axis,
            _observer_name(fq))


def _unfused(gm: fx.GraphModule, march: str) -> list[tuple[str, str]]:
    found = []
    for node in op_nodes(gm):
        for pattern in registry.fusion_patterns(march):
            chain = match_chain(gm, node, pattern, single_use=False)
            if chain is not None:
                names = " -> ".join(module_name_of(n) or n.name for n in chain[0])
                found.append((names, pattern.name))
                break
    return found


def _call_counts(gm: fx.GraphModule, inputs: tuple) -> dict[str, int]:
    probe = copy.deepcopy(gm)  # running the model would move the caller's observers
    counts = {name: 0 for name, m in probe.named_modules()
              if name and (isinstance(m, FakeQuantize) is False) and getattr(type(m), "_qframe_leaf", False)}
    hooks = []
    for name, mod in probe.named_modules():
        if name in counts:
            hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: counts.__setitem__(name, counts[name] + 1)))
    for node in op_nodes(probe):  # FloatFunctional methods do not go through forward hooks
        if node.op == "call_method" and module_of(probe, node) is not None:
            counts[module_name_of(node)] = counts.get(module_name_of(node), 0) + 1
    try:
        with torch.no_grad():
            probe(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return counts


def _is_dequant(gm: fx.GraphModule, node: fx.Node) -> bool:
    mod = module_of(gm, node)
    return mod is not None and (is_dequant_stub(mod) or type(mod).__name__ == "DeQuantStub")


def check_qat_model(model: fx.GraphModule, example_inputs: Any, save_results: bool = False,
                    out_dir: Optional[str] = None, print_results: bool = True) -> CheckResult:
    """Check a model returned by ``prepare``/``prepare_qat_fx``; print and optionally save the report.

    Args:
        model: the calibration/QAT GraphModule.
        example_inputs: a tensor or a tuple of positional inputs.
        save_results: write ``model_check_result.txt`` into ``out_dir`` (default: the current folder).
        out_dir: where to write the report.
    """
    meta = getattr(model, "meta", {})
    if meta.get("qframe_stage") != "qat":
        raise QframeError("check_qat_model expects the GraphModule returned by prepare/prepare_qat_fx")
    march = meta["qframe_march"]
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    unfused = _unfused(model, march)
    counts = _call_counts(model, inputs)

    out_rows, weight_rows, hints = [], [], []
    for node in op_nodes(model):
        name = module_name_of(node)
        mod = module_of(model, node)
        if name is None or mod is None:
            continue
        if not hasattr(mod, "march"):  # float or value-preserving module (ReLU, Dropout…): no qconfig of its own
            out_rows.append((name, type(mod).__name__, "-", "-", "qconfig = None", ""))
            continue
        producers = getattr(mod, "_input_producers", [])
        in_dtype = "torch.float32" if not producers else _output_dtype(producers[0])
        out_rows.append(_fq_row(name, mod, in_dtype))
        wfq = getattr(mod, "weight_fake_quant", None)
        if wfq is not None:
            weight_rows.append((name, type(mod).__name__, str(wfq.dtype), wfq.ch_axis, _observer_name(wfq)))
            fq = getattr(mod, "activation_post_process", None)
            if fq is not None and node.users and all(_is_dequant(model, u) for u in node.users):
                hints.append(f"{name}: its output goes straight to a DeQuantStub with {fq.dtype} precision; a "
                             f"high-precision output (default_qat_8bit_weight_32bit_out_fake_quant_qconfig) keeps "
                             f"more accuracy")
    for name, n in counts.items():
        if n == 0:
            hints.append(f"{name}: never called on the example input")
        elif n > 1:
            hints.append(f"{name}: called {n} times (shared); each call site should have its own module")
    result = CheckResult(unfused, counts, out_rows, weight_rows, hints)
    report = format_report(result)
    if print_results:
        print(report)
    if save_results:
        folder = out_dir or "."
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model_check_result.txt"), "w", encoding="utf-8") as f:
            f.write(report + "\n")
    return result


def format_report(r: CheckResult) -> str:
    parts = []
    if r.unfused:
        parts.append("Fusable modules are listed below:\n" + tabulate(r.unfused, headers=["modules", "pattern"]))
    else:
        parts.append("No fusable pattern was left unfused.")
    shared = {k: v for k, v in r.call_counts.items() if v != 1}
    parts.append("All modules in the model run exactly once." if not shared else
                 "Modules not run exactly once:\n" + tabulate(sorted(shared.items()), headers=["name", "calls"]))
    parts.append("Each layer out qconfig:\n" + tabulate(
        r.out_qconfigs, headers=["Module Name", "Module Type", "Input dtype", "out dtype", "ch_axis", "observer"],
        tablefmt="psql"))
    parts.append("Weight qconfig:\n" + tabulate(
        r.weight_qconfigs, headers=["Module Name", "Module Type", "weight dtype", "ch_axis", "observer"],
        tablefmt="psql"))
    if r.hints:
        parts.append("Please check these settings:\n" + "\n".join(f"- {h}" for h in r.hints))
    return "\n\n".join(parts)
