"""``check_model``: can the march run every op of this converted model?"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import attrs
import torch
from tabulate import tabulate
from torch import nn

from ...errors import UnsupportedOpError
from ...march import get_march, resolve_march
from ..fx.tracer import model_class_name
from . import graph as g

#: where a model input comes from on the target
INPUT_SOURCES = ("ddr", "pyramid", "resizer")

InputSource = Union[None, str, Sequence[str]]


class ModelCheckError(UnsupportedOpError):
    """check_model found ops the march cannot run; ``problems`` lists each one."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@attrs.frozen
class LayerRow:
    """One op of a checked model, as the advice table shows it.

    ``inputs``/``outputs`` are ``dtype[shape]`` strings; ``macs`` counts the multiply-accumulates of its
    conv/linear/matmul ops (0 for others).
    """

    name: str
    op: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    macs: int


@attrs.define
class CheckReport:
    """What :func:`check_model` found.

    Attributes:
        model: the model's class name.
        march: the march checked against.
        layers: every op of the deployed graph in execution order.
        input_sources: one of :data:`INPUT_SOURCES` per model input.
        problems: empty when the model passes (check_model raises otherwise).
    """

    model: str
    march: str
    layers: list[LayerRow]
    input_sources: list[str]
    problems: list[str] = attrs.field(factory=list)
    graph: Any = attrs.field(default=None, repr=False, eq=False)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.layers)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.layers:
            counts[r.op] = counts.get(r.op, 0) + 1
        return counts

    def table(self) -> str:
        rows = [(r.name, _short(r.op), r.kind, ", ".join(r.inputs), ", ".join(r.outputs), f"{r.macs:,}")
                for r in self.layers]
        return tabulate(rows, headers=("layer", "op", "kind", "inputs", "outputs", "MACs"), tablefmt="simple")


def _short(op: str) -> str:
    """``qframe_core.nn.quantized.weighted.Conv2d`` -> ``quantized.Conv2d``."""
    parts = op.split(".")
    return ".".join(parts[-2:]) if len(parts) > 2 and not op.startswith("aten::") else op


def normalize_input_source(input_source: InputSource, n_inputs: int, who: str) -> list[str]:
    if input_source is None:
        return ["ddr"] * n_inputs
    sources = [input_source] * n_inputs if isinstance(input_source, str) else list(input_source)
    if len(sources) != n_inputs:
        raise ValueError(f"{who}: input_source lists {len(sources)} source(s) for {n_inputs} model input(s); give "
                         f"one of {INPUT_SOURCES} per input, or one string for all")
    for s in sources:
        if s not in INPUT_SOURCES:
            raise ValueError(f"{who}: input_source {s!r} is not one of {INPUT_SOURCES}")
    return sources


def _input_source_problems(inputs: Sequence[torch.Tensor], sources: list[str], march: str) -> list[str]:
    out = []
    for i, (t, s) in enumerate(zip(inputs, sources)):
        if s in ("pyramid", "resizer") and (t.dim() != 4 or t.shape[1] not in (1, 3)):
            out.append(f"model input {i} has shape {list(t.shape)} but input_source {s!r} feeds images: on march "
                       f"{march!r} pyramid/resizer inputs are 4-D [N, C, H, W] with C = 1 (Y) or 3 (YUV). Way out: "
                       f"pass input_source='ddr' for this input (e.g. input_source=['pyramid', 'ddr'])")
    return out


def _target_march(module: nn.Module, march: Optional[str], who: str) -> str:
    recorded = g.march_of_script(module) if isinstance(module, torch.jit.ScriptModule) else g.march_of_module(module)
    if len(recorded) > 1:
        raise ModelCheckError(f"{who}: {type(module).__name__} mixes integer ops converted for marches "
                              f"{sorted(recorded)}; a deployable model targets one march. Way out: prepare and "
                              f"convert the whole model for one march")
    if march is not None:
        target = resolve_march(march).name
        if recorded and target not in recorded:
            (was,) = recorded
            raise ModelCheckError(
                f"{who}: {type(module).__name__} was converted for march {was!r} but is checked against march "
                f"{target!r}; its integer ops compute with the arithmetic and op table of march {was!r}. Way out: pass "
                f"march={was!r}, or prepare/convert the float model again with march={target!r}")
        return target
    if recorded:
        return next(iter(recorded))
    return resolve_march(get_march()).name


def _qat_problems(module: nn.Module, table: g.MarchTable, modules: dict) -> list[str]:
    found: list = []
    for path, info in modules.items():  # outermost QAT modules only (named_modules is pre-order)
        if table.is_qat(info.cls) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, info))
    stage = getattr(module, "meta", {}).get("qframe_stage") if isinstance(getattr(module, "meta", None), dict) else None
    if not found and stage != "qat":
        return []
    shown = ", ".join(f"{p!r} ({i.class_path})" for p, i in found[:6]) + (" ..." if len(found) > 6 else "")
    return [f"{type(module).__name__} is a QAT/calibration model, not a converted one: {len(found)} fake-quantized "
            f"module(s) remain ({shown}). Way out: quantized_model = convert_fx(qat_model) (eager: "
            f"convert(qat_model.eval())), then check the quantized model"]


def _layer_problems(dg: g.DeployGraph, march: str) -> list[str]:
    out = []
    by_module: dict[tuple[str, str], list[str]] = {}
    for layer in dg.layers:
        if layer.kind in (g.INTEGER, g.PASSTHROUGH, g.LAYOUT):
            continue
        info = dg.modules.get(layer.path)
        where = f"{layer.path!r} ({info.class_path if info else '?'})" if layer.path else \
            f"the forward of the model itself ({info.class_path if info else '?'})"
        if layer.kind == g.FOREIGN:
            out.append(f"{where} is an integer module that the op table of march {march!r} does not list (it "
                       f"was converted for another march)")
        elif layer.kind == g.QAT:
            out.append(f"{where} is an unconverted QAT module; run convert_fx/convert")
        else:
            by_module.setdefault((where, layer.kind), []).extend(
                op for op in layer.torch_ops if op not in by_module.get((where, layer.kind), []))
    for (where, kind), ops in by_module.items():
        if kind == g.FLOAT:
            out.append(f"{where} computes in float ({', '.join(ops)}): float compute is not run by march {march!r}")
        else:
            out.append(f"{where} runs {', '.join(ops)} on integer tensors outside any integer module; the op "
                       f"table of march {march!r} lists no such op")
    return out


def _rank_problems(dg: g.DeployGraph, march: str, max_rank: Optional[int]) -> list[str]:
    """Integer tensors of higher rank than the march computes (MarchSpec.max_rank)."""
    if max_rank is None:
        return []
    out = []
    for layer in dg.layers:
        for role, infos in (("takes", layer.input_info), ("produces", layer.output_info)):
            for info in infos:
                if info is not None and info.shape is not None and len(info.shape) > max_rank and \
                        not info.dtype.startswith(("float", "bfloat")):
                    out.append(f"{layer.name!r} ({layer.op}) {role} the {len(info.shape)}-D tensor {info}: march "
                               f"{march!r} computes tensors of rank <= {max_rank}. Way out: keep the data "
                               f"{max_rank}-D (fold the extra dims into N or C)")
                    break
    return out


def _raise(model: str, march: str, problems: list[str], hybrid: bool) -> None:
    lines = "\n".join(f"- {p}" for p in problems)
    rule = g.HYBRID_RULE if hybrid else ("every op of a deployed model must be an integer op of the march's op "
                                         "table, within the march's limits")
    raise ModelCheckError(
        f"check_model: march {march!r} cannot run {len(problems)} part(s) of {model}:\n{lines}\n"
        f"Rule: {rule}.\n"
        f"Way out: quantize these ops too (prepare_qat_fx without hybrid=True, or without them in hybrid_dict; "
        f"replace ops the march's op table does not list, see the march README), or move float pre-/post-"
        f"processing out of the deployed model (before its QuantStub / after its DeQuantStub, in your own code), "
        f"then convert and check again", problems)


def inspect(module: nn.Module, example_inputs: g.ExampleInputs, march: Optional[str] = None,
            input_source: InputSource = None, who: str = "check_model") -> CheckReport:
    """The check without printing: a :class:`CheckReport` whose ``graph`` holds the traced model.

    Raises:
        ModelCheckError: naming every op the march cannot run.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"{who}: expected a converted model (nn.Module or its torch.jit.trace), got "
                        f"{type(module).__name__}")
    inputs = g.as_inputs(example_inputs, who)
    sources = normalize_input_source(input_source, len(inputs), who)
    target = _target_march(module, march, who)
    table = g.MarchTable.of(target)
    modules = g.module_table(module)
    problems = _qat_problems(module, table, modules)
    if problems:
        raise ModelCheckError(f"{who}: march {target!r} cannot run {type(module).__name__}:\n- {problems[0]}",
                              problems)
    script = g.trace(module, inputs, who)
    if not isinstance(module, torch.jit.ScriptModule):
        recorded = g.march_of_script(script) - {target}
        if recorded:
            raise ModelCheckError(f"{who}: {type(module).__name__} runs integer kernels of march "
                                  f"{sorted(recorded)} but is checked against march {target!r}. Way out: pass "
                                  f"march={sorted(recorded)[0]!r}, or convert again for {target!r}")
    dg = g.build(script, table, inputs, modules if not isinstance(module, torch.jit.ScriptModule) else None)
    if isinstance(module, torch.jit.ScriptModule) and len(modules) == 1 and any(
            layer.kind in g.REFUSED for layer in dg.layers):
        raise ModelCheckError(
            f"{who}: this TorchScript program has no submodules, so its ops cannot be matched to the integer modules of march "
            f"{target!r} (a frozen program, e.g. a compile_model artifact with opt >= 1, which was checked "
            f"when it was compiled). Way out: pass the converted model or its torch.jit.trace")
    problems = (_layer_problems(dg, target) + _rank_problems(dg, target, resolve_march(target).max_rank)
                + _input_source_problems(inputs, sources, target))
    model_name = model_class_name(module)  # the float model's class for qframe's GraphModules and their traces
    rows = [LayerRow(layer.name, layer.op, layer.kind, tuple(str(i) for i in layer.input_info if i is not None),
                     tuple(str(o) for o in layer.output_info if o is not None), layer.macs) for layer in dg.layers]
    if problems:
        hybrid = any(layer.kind == g.FLOAT for layer in dg.layers)
        _raise(model_name, target, problems, hybrid)
    return CheckReport(model_name, target, rows, sources, [], dg)


def check_model(module: nn.Module, example_inputs: g.ExampleInputs, march: Optional[str] = None,
                input_source: InputSource = None, advice: Union[None, bool, int] = None) -> CheckReport:
    """Check that march ``march`` runs every op of a converted model (the seeds' ``check_model``).

    Args:
        module: the integer model from ``convert_fx``/``convert``, or its ``torch.jit.trace``.
        example_inputs: ``example_input`` or ``[example_input, ...]`` (CPU tensors).
        march: defaults to the march the model was converted for, else the current march; a model converted
            for another march is an error.
        input_source: ``"ddr"`` (default), ``"pyramid"`` or ``"resizer"``, one for all inputs or a list with
            one per input; pyramid/resizer inputs must be 4-D images with 1 or 3 channels.
        advice: ``1``/``True`` also prints a per-layer table (op, input/output dtypes and shapes, MACs).

    Returns:
        the :class:`CheckReport` (after printing ``qframe model check PASS``).

    Raises:
        ModelCheckError (an :class:`~qframe_core.errors.UnsupportedOpError`): float compute left in the model
        (hybrid models), an unconverted QAT model, ops the march's table does not list, a march mismatch or
        a bad input_source — each named with its module path, class and the way out.
    """
    report = inspect(module, example_inputs, march, input_source)
    if advice:
        print(f"qframe model check: {report.model} on march {report.march!r}, {len(report.layers)} ops, "
              f"{report.total_macs:,} MACs")
        print(report.table())
    print("This model is supported!")
    print("qframe model check PASS")
    return report
