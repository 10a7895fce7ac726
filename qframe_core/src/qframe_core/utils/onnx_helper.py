"""ONNX export of qframe models, for viewing their structure (netron) and for hybrid models' CPU part.

* :func:`export_to_onnx` exports float and QAT models.  Each ``FakeQuantize`` is one
  ``qframe::FakeQuantize`` node (attributes ``dtype``, ``qmin``, ``qmax``, ``qscheme``, ``ch_axis``,
  ``scale``, ``state``, ``name``) after the float op it quantizes; with ``operator_export_type=None``
  (or ``OperatorExportTypes.ONNX``, the hybrid case) it is standard ONNX instead: a
  ``QuantizeLinear``/``DequantizeLinear`` pair for int8 (per channel from opset 13), ``Div``/``Round``/
  ``Max``/``Min``/``Mul`` for int16.
* :func:`export_quantized_onnx` exports converted integer models.  Every integer op is one node of the
  ``qframe`` domain (``qframe::Conv2d``, ``qframe::Linear``, ``qframe::Add``, ``qframe::LookupTable``,
  ``qframe::Quantize``, …) carrying its integer parameters: the module's buffers (int8 weights, int32
  biases, multipliers, shifts) as named inputs, everything else (march, stride/padding/groups, output
  dtype, clamp bounds, scales, tables) as attributes; the attribute ``inputs`` names each input.

The files are for viewing, not for inference (as in the seeds): qframe's own ops are single nodes whose
insides are not exported; community ops appear as torch exports them.  Exporting works on a copy of the
model: the caller's model (weights, scales, observer statistics, training mode) is left as it was.

:func:`register_onnx_ops` registers the symbolics of ``torch.ops.qframe.*`` (conv2d, linear, add) for
users who call ``torch.onnx.export(..., dynamo=False)`` themselves; the two export functions call it.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import numbers
import os
import warnings
from typing import Any, Callable, Iterator, Optional

import attrs
import torch
from torch import nn
from torch.onnx import OperatorExportTypes, TrainingMode
from torch.utils import _pytree as pytree

from ..dtype import QuantDType

__all__ = ["export_to_onnx", "export_quantized_onnx", "register_onnx_ops", "QFRAME_DOMAIN"]

#: the ONNX domain of qframe's nodes
QFRAME_DOMAIN = "qframe"

#: tensors larger than this are not copied into node attributes (the node says how large they are)
_MAX_ATTR_NUMEL = 1 << 16


# --------------------------------------------------------------------------------------------------
# attributes
# --------------------------------------------------------------------------------------------------
def _attr_value(key: str, value: Any, out: dict[str, Any]) -> None:
    """Store ``value`` in ``out`` under ``key`` with the suffix ``g.op`` expects (``_i``, ``_f``, ``_s`` …)."""
    if value is None:
        return
    if isinstance(value, bool):
        out[f"{key}_i"] = int(value)
    elif isinstance(value, numbers.Integral):
        out[f"{key}_i"] = int(value)
    elif isinstance(value, numbers.Real):
        out[f"{key}_f"] = float(value)
    elif isinstance(value, str):
        out[f"{key}_s"] = value
    elif isinstance(value, enum.Enum):
        out[f"{key}_s"] = value.name
    elif isinstance(value, torch.Tensor):
        if value.numel() > _MAX_ATTR_NUMEL:
            out[f"{key}_shape_i"] = list(value.shape)
        elif value.dtype == torch.bool:
            out[f"{key}_t"] = value.detach().cpu().to(torch.int8)
        else:
            out[f"{key}_t"] = value.detach().cpu().clone()
    elif isinstance(value, (tuple, list)):
        if value and all(isinstance(v, numbers.Integral) for v in value):
            out[f"{key}_i"] = [int(v) for v in value]
        elif value and all(isinstance(v, numbers.Real) for v in value):
            out[f"{key}_f"] = [float(v) for v in value]
        elif value and all(isinstance(v, str) for v in value):
            out[f"{key}_s"] = list(value)
        elif value:
            for i, v in enumerate(value):
                _attr_value(f"{key}_{i}", v, out)
    elif isinstance(value, nn.Module):
        out[f"{key}_s"] = f"{type(value).__name__}({value.extra_repr()})"
    elif isinstance(value, QuantDType):
        out[f"{key}_s"] = str(value)
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            _attr_value(f"{key}_{field.name}", getattr(value, field.name), out)
        if not any(k.startswith(f"{key}_") for k in out):
            out[f"{key}_s"] = type(value).__name__
    elif isinstance(value, type):
        out[f"{key}_s"] = value.__name__
    # anything else (callables, caches) is not structure worth showing


def _module_attributes(m: nn.Module) -> dict[str, Any]:
    """The plain settings of an integer module as ONNX attributes (buffers are inputs, not attributes)."""
    out: dict[str, Any] = {}
    for key, value in vars(m).items():
        if key.startswith("_") or key in ("training", "qframe_name", "dump_patches", "call_super_init"):
            continue
        _attr_value(key, value, out)
    for key, value in m._modules.items():
        if value is not None:
            _attr_value(key, value, out)
    return out


# --------------------------------------------------------------------------------------------------
# one module -> one node
# --------------------------------------------------------------------------------------------------
class _NodeSpec:
    """What one call of a module exported as a single node needs: how to call it, and its node."""

    def __init__(self, fn: Callable[..., Any], op_type: str, attributes: dict[str, Any], arg_spec: Any,
                 consts: list[Any], n_inputs: int, input_names: list[str]) -> None:
        self.fn = fn
        self.op_type = op_type
        self.attributes = attributes
        self.arg_spec = arg_spec
        self.consts = consts  # the non-tensor leaves of (args, kwargs), None where a tensor goes
        self.n_inputs = n_inputs
        self.input_names = input_names
        self.out_spec: Any = None
        self.out_consts: list[Any] = []
        self.out_meta: list[tuple[torch.dtype, list[int]]] = []


class _OneNode(torch.autograd.Function):
    """Runs a module's real forward; the ONNX exporter sees one ``qframe::<op_type>`` node."""

    @staticmethod
    def forward(ctx: Any, spec: _NodeSpec, *tensors: torch.Tensor) -> Any:
        leaves = list(spec.consts)
        it = iter(tensors[:spec.n_inputs])
        leaves = [next(it) if c is _TENSOR else c for c in leaves]
        args, kwargs = pytree.tree_unflatten(leaves, spec.arg_spec)
        out = spec.fn(*args, **kwargs)
        out_leaves, spec.out_spec = pytree.tree_flatten(out)
        tensors_out = [t for t in out_leaves if isinstance(t, torch.Tensor)]
        spec.out_consts = [_TENSOR if isinstance(t, torch.Tensor) else t for t in out_leaves]
        spec.out_meta = [(t.dtype, list(t.shape)) for t in tensors_out]
        # a fresh tensor per output: the autograd function must not return its inputs as they are
        outs = tuple(t.clone() for t in tensors_out)
        return outs[0] if len(outs) == 1 else outs

    @staticmethod
    def symbolic(g: Any, spec: _NodeSpec, *values: Any) -> Any:
        outs = g.op(f"{QFRAME_DOMAIN}::{spec.op_type}", *values, outputs=max(len(spec.out_meta), 1),
                    inputs_s=spec.input_names, **spec.attributes)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        for v, (dtype, shape) in zip(outs, spec.out_meta):
            v.setType(torch._C.TensorType.create_from_tensor(torch.empty(shape, dtype=dtype)))
        return tuple(outs) if len(outs) > 1 else outs[0]


class _Tensor:
    def __repr__(self) -> str:
        return "<tensor>"


_TENSOR = _Tensor()


def _as_one_node(module: nn.Module, method: str, op_type: str, attributes: dict[str, Any]) -> None:
    """Make ``module.<method>`` export as one node (on the export copy: the patch is an instance attribute)."""
    fn = getattr(module, method)
    buffers = [(n, b) for n, b in module.named_buffers() if b is not None]

    def call(*args: Any, **kwargs: Any) -> Any:
        if not torch.jit.is_tracing():
            return fn(*args, **kwargs)
        leaves, arg_spec = pytree.tree_flatten((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        consts = [_TENSOR if isinstance(t, torch.Tensor) else t for t in leaves]
        names = [f"input{i}" for i in range(len(tensors))] + [n for n, _ in buffers]
        spec = _NodeSpec(fn, op_type, attributes, arg_spec, consts, len(tensors), names)
        outs = _OneNode.apply(spec, *tensors, *[b for _, b in buffers])
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        it = iter(outs)
        out_leaves = [next(it) if c is _TENSOR else c for c in spec.out_consts]
        return pytree.tree_unflatten(out_leaves, spec.out_spec)

    setattr(module, method, call)


# --------------------------------------------------------------------------------------------------
# fake quantize
# --------------------------------------------------------------------------------------------------
class _FakeQuantNode(torch.autograd.Function):
    """A FakeQuantize as one node: ``qframe::FakeQuantize`` or standard ONNX (``standard=True``)."""

    @staticmethod
    def forward(ctx: Any, info: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        from ..quantization.fake_quantize import fake_quantize

        if info["identity"]:
            return x.clone()
        return fake_quantize(x, info["scale_tensor"], info["qmin"], info["qmax"], info["ch_axis"])

    @staticmethod
    def symbolic(g: Any, info: dict[str, Any], x: Any) -> Any:
        if info["standard"]:
            return _standard_fake_quant(g, info, x)
        out: dict[str, Any] = {}
        for key in ("name", "kind", "dtype", "qmin", "qmax", "qscheme", "ch_axis", "scale", "state", "fixed_scale",
                    "calibrated"):
            _attr_value(key, info[key], out)
        y = g.op(f"{QFRAME_DOMAIN}::FakeQuantize", x, **out)
        y.setType(x.type())
        return y


def _standard_fake_quant(g: Any, info: dict[str, Any], x: Any) -> Any:
    scale = torch.tensor(info["scale"], dtype=torch.float32)
    axis = info["ch_axis"]
    per_channel = axis is not None and scale.numel() > 1
    if info["bits"] == 8 and (not per_channel or g.opset >= 13):
        kw = {"axis_i": axis} if per_channel else {}
        s = g.op("Constant", value_t=scale if per_channel else scale.reshape(()))
        zp_t = torch.zeros(scale.numel() if per_channel else (), dtype=torch.int8)
        zp = g.op("Constant", value_t=zp_t)
        q = g.op("QuantizeLinear", x, s, zp, **kw)
        return g.op("DequantizeLinear", q, s, zp, **kw)
    # int16 (QuantizeLinear takes int16 from opset 21 only) or per channel before opset 13:
    # clamp(round(x / s)) * s in float ops, the same value
    if per_channel:
        shape = [1] * len(info["shape"])
        shape[axis] = -1
        scale = scale.reshape(shape)
    else:
        scale = scale.reshape(())
    s = g.op("Constant", value_t=scale)
    q = g.op("Round", g.op("Div", x, s))
    q = g.op("Max", q, g.op("Constant", value_t=torch.tensor(float(info["qmin"]))))
    q = g.op("Min", q, g.op("Constant", value_t=torch.tensor(float(info["qmax"]))))
    return g.op("Mul", q, s)


def _functional_fake_quant_symbolic(g: Any, x: Any, scale: Any, qmin: int, qmax: int) -> Any:
    """Symbolic of ``fake_quantize()`` called as a function inside a QAT module's float path (fixed grids of
    LSTMCell/attention, LayerNorm's weight): one ``qframe::FakeQuantize`` node, or standard ONNX."""
    s = _const(scale)
    bits = 8 if (qmin, qmax) == (-128, 127) else 16
    if _EXPORT_STANDARD[0]:
        if bits == 8 and isinstance(s, float):
            sv = g.op("Constant", value_t=torch.tensor(s, dtype=torch.float32))
            zp = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
            return g.op("DequantizeLinear", g.op("QuantizeLinear", x, sv, zp), sv, zp)
        q = g.op("Round", g.op("Div", x, scale))
        q = g.op("Max", q, g.op("Constant", value_t=torch.tensor(float(qmin))))
        q = g.op("Min", q, g.op("Constant", value_t=torch.tensor(float(qmax))))
        return g.op("Mul", q, scale)
    out: dict[str, Any] = {}
    _attr_value("qmin", qmin, out)
    _attr_value("qmax", qmax, out)
    _attr_value("dtype", f"qint{bits}", out)
    inputs = [x]
    if isinstance(s, float):
        _attr_value("scale", [s], out)
    elif isinstance(s, list):
        _attr_value("scale", torch.tensor(s, dtype=torch.float32).reshape(-1).tolist(), out)
    else:
        inputs.append(scale)  # computed from the weights (LayerNorm): an input
    y = g.op(f"{QFRAME_DOMAIN}::FakeQuantize", *inputs, inputs_s=["input", "scale"][:len(inputs)], **out)
    y.setType(x.type())
    return y


#: whether the export in progress is standard ONNX (read by the symbolic above)
_EXPORT_STANDARD = [False]


@contextlib.contextmanager
def _functional_fake_quant_exported(standard: bool) -> Iterator[None]:
    """While exporting, ``fake_quantize()``'s autograd function has a symbolic (removed afterwards)."""
    from ..quantization import fake_quantize as fq_module

    ste = fq_module._FakeQuantSTE
    had = "symbolic" in vars(ste)
    saved = vars(ste).get("symbolic")
    ste.symbolic = staticmethod(_functional_fake_quant_symbolic)
    _EXPORT_STANDARD[0] = standard
    try:
        yield
    finally:
        _EXPORT_STANDARD[0] = False
        if had:
            ste.symbolic = saved
        else:
            del ste.symbolic


def _patch_fake_quant(fq: nn.Module, name: str, standard: bool) -> None:
    """Make ``fq`` export as one node and stop observing (the copy's scales stay as the caller's)."""
    from ..quantization.fake_quantize import FakeQuantState

    calibrated = bool(fq.calibrated)
    # the scale quantization uses (LSQ: max(|learned scale|, eps))
    scale = fq.quant_params().scale.detach().clone() if calibrated else fq.scale.detach().clone()
    per_channel = fq.ch_axis is not None
    info = {
        "name": name or fq.qframe_name, "kind": type(fq).__name__, "dtype": str(fq.dtype), "bits": fq.dtype.bits,
        "qmin": int(fq.quant_min), "qmax": int(fq.quant_max),
        "qscheme": "per_channel_symmetric" if per_channel else "per_tensor_symmetric",
        "ch_axis": fq.ch_axis, "scale": scale.reshape(-1).tolist() if calibrated else None,
        "scale_tensor": scale, "state": fq.state, "fixed_scale": bool(fq.fixed_scale), "calibrated": calibrated,
        "identity": not calibrated or fq.state is FakeQuantState.CALIBRATION, "standard": standard,
    }

    def forward(x: torch.Tensor) -> torch.Tensor:
        if standard and not calibrated:
            return x  # no scale to show: standard ONNX has nothing to say about it
        if info["ch_axis"] is not None and info["ch_axis"] < 0:
            info["ch_axis"] = info["ch_axis"] + x.dim()
        info["shape"] = list(x.shape)
        return _FakeQuantNode.apply(info, x)

    fq.forward = forward
    # the copy's QAT modules take their float path (float op + this node), not VALIDATION's integer simulation
    fq.state = FakeQuantState.QAT


# --------------------------------------------------------------------------------------------------
# torch.ops.qframe.* symbolics
# --------------------------------------------------------------------------------------------------
def _const(v: Any) -> Any:
    """The Python value of a constant graph value (None for an absent optional input or a computed value)."""
    from torch.onnx import symbolic_helper as sh

    if sh._is_none(v):
        return None
    node = v.node()
    kind = node.kind()
    if kind == "prim::ListConstruct":
        return [_const(i) for i in node.inputs()]
    if kind == "prim::Constant":
        value = v.toIValue()
    elif kind == "onnx::Constant":
        value = sh._node_get(node, "value")
    else:
        return None
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.tolist()
    return value


def _op_node(g: Any, op_type: str, named_inputs: list[tuple[str, Any]], settings: dict[str, Any],
             dtype: str) -> Any:
    present = [(n, v) for n, v in named_inputs if v is not None and not _is_none(v)]
    out: dict[str, Any] = {}
    for key, value in settings.items():
        _attr_value(key, value, out)
    y = g.op(f"{QFRAME_DOMAIN}::{op_type}", *[v for _, v in present], inputs_s=[n for n, _ in present], **out)
    first = present[0][1].type()
    if isinstance(first, torch._C.TensorType):
        y.setType(first.with_dtype(getattr(torch, dtype)))
    return y


def _is_none(v: Any) -> bool:
    from torch.onnx import symbolic_helper as sh

    return sh._is_none(v)


def _conv2d_symbolic(g, march, x, weight, bias, stride, padding, dilation, groups, multiplier, shift, out_dtype,
                     clamp_min, clamp_max, residual, residual_multiplier, name, channels_last_output):
    # channels_last_output is a memory-layout choice of the CPU kernels, not part of the op: not exported
    dtype = _const(out_dtype)
    y = _op_node(g, "Conv2d", [("input", x), ("weight", weight), ("bias", bias), ("multiplier", multiplier),
                               ("shift", shift), ("residual", residual), ("residual_multiplier", residual_multiplier)],
                 {"name": _const(name), "march": _const(march), "stride": _const(stride), "padding": _const(padding),
                  "dilation": _const(dilation), "groups": _const(groups), "out_dtype": dtype,
                  "clamp_min": _const(clamp_min), "clamp_max": _const(clamp_max)}, dtype)
    return y


def _linear_symbolic(g, march, x, weight, bias, multiplier, shift, out_dtype, clamp_min, clamp_max, name):
    dtype = _const(out_dtype)
    return _op_node(g, "Linear", [("input", x), ("weight", weight), ("bias", bias), ("multiplier", multiplier),
                                  ("shift", shift)],
                    {"name": _const(name), "march": _const(march), "out_dtype": dtype,
                     "clamp_min": _const(clamp_min), "clamp_max": _const(clamp_max)}, dtype)


def _add_symbolic(g, march, a, b, multiplier_a, multiplier_b, shift, out_dtype, clamp_min, clamp_max, name):
    dtype = _const(out_dtype)
    return _op_node(g, "Add", [("input0", a), ("input1", b)],
                    {"name": _const(name), "march": _const(march), "multiplier_a": _const(multiplier_a),
                     "multiplier_b": _const(multiplier_b), "shift": _const(shift), "out_dtype": dtype,
                     "clamp_min": _const(clamp_min), "clamp_max": _const(clamp_max)}, dtype)


_REGISTERED = False


def register_onnx_ops() -> None:
    """Register the ONNX symbolics of ``torch.ops.qframe.conv2d/linear/add`` (idempotent).

    Needed only by users calling ``torch.onnx.export(..., dynamo=False)`` on a converted model
    themselves; each op then becomes one ``qframe::Conv2d``/``Linear``/``Add`` node.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from ..nn.quantized import ops  # noqa: F401  (defines torch.ops.qframe.*)

    for op, fn in (("conv2d", _conv2d_symbolic), ("linear", _linear_symbolic), ("add", _add_symbolic)):
        torch.onnx.register_custom_op_symbolic(f"{QFRAME_DOMAIN}::{op}", fn, 9)
    _REGISTERED = True


# --------------------------------------------------------------------------------------------------
# what kind of model is it
# --------------------------------------------------------------------------------------------------
def _is_integer_module(m: nn.Module) -> bool:
    """A module produced by convert (it has ``from_qat`` and is not a QAT module)."""
    from ..nn.qat.base import QATModule

    return callable(getattr(type(m), "from_qat", None)) and not isinstance(m, QATModule)


def _first(model: nn.Module, pred: Callable[[nn.Module], bool]) -> Optional[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if pred(m):
            return name, m
    return None


def _describe(name: str, m: nn.Module) -> str:
    return f"{name or '<model>'!r} ({type(m).__module__}.{type(m).__name__})"


def _check_model(model: Any, fn: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise TypeError(f"{fn}: model is a TorchScript module; export the nn.Module it was traced from")


def _normalize_args(args: Any) -> tuple:
    if isinstance(args, torch.Tensor):
        return (args,)
    if isinstance(args, list):
        return tuple(args)
    return args


def _export_type(operator_export_type: Any) -> Any:
    return OperatorExportTypes.ONNX if operator_export_type is None else operator_export_type


def _copy(model: nn.Module, fn: str) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as e:  # noqa: BLE001  (say which step failed and what to do)
        raise TypeError(f"{fn}: the model cannot be copied ({type(e).__name__}: {e}); the export works on a copy "
                        f"so that the caller's model is never changed — make the model deep-copyable") from e


def _run_export(fn: str, work: nn.Module, args: tuple, f: Any, **kwargs: Any) -> None:
    standard = kwargs["operator_export_type"] == OperatorExportTypes.ONNX
    try:
        with warnings.catch_warnings(), _functional_fake_quant_exported(standard):
            # the TorchScript exporter is the one that keeps custom nodes (torch marks it and its options
            # deprecated); its tracer warnings ("the trace might not generalize") do not concern a file
            # made for viewing the structure
            warnings.filterwarnings("ignore", message=r".*(legacy TorchScript-based ONNX|operator_export_type|"
                                    r"feature will be removed).*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(work, args, f, dynamo=False, autograd_inlining=False, **kwargs)
    except Exception as e:
        opset = kwargs.get("opset_version") or "default"
        e.add_note(f"{fn}: torch.onnx.export (TorchScript exporter, opset {opset}, operator_export_type "
                   f"{kwargs['operator_export_type']}) failed. qframe's own ops are exported as single nodes and "
                   f"community ops as torch exports them: the error above names the op torch could not export "
                   f"(with operator_export_type=None every op must have a standard ONNX form; the default "
                   f"ONNX_FALLTHROUGH keeps unknown ops as they are)")
        raise


def _check_file(f: Any) -> None:
    """``onnx.checker`` on what was written to ``f`` (a path, or a stream with ``getvalue``)."""
    import onnx

    if isinstance(f, (str, os.PathLike)):
        onnx.checker.check_model(onnx.load(os.fspath(f)))
    elif hasattr(f, "getvalue"):
        onnx.checker.check_model(onnx.load_from_string(f.getvalue()))


# float qframe modules computed in several torch steps: one node each in a viewing (non-standard) export
def _float_one_node_classes() -> tuple[type, ...]:
    from ..nn import AnchorGenerator, MultiScaleRoIAlign, RoIAlign

    return (AnchorGenerator, MultiScaleRoIAlign, RoIAlign)


# --------------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------------
def export_to_onnx(
    model: nn.Module,
    args: Any,
    f: Any,
    export_params: bool = True,
    verbose: bool = False,
    training: Any = TrainingMode.EVAL,
    input_names: Optional[list[str]] = None,
    output_names: Optional[list[str]] = None,
    operator_export_type: Any = OperatorExportTypes.ONNX_FALLTHROUGH,
    opset_version: Optional[int] = None,
    do_constant_folding: bool = True,
    example_outputs: Any = None,
    strip_doc_string: bool = True,
    dynamic_axes: Any = None,
    keep_initializers_as_inputs: Optional[bool] = None,
    custom_opsets: Optional[dict[str, int]] = None,
    enable_onnx_checker: bool = False,
) -> None:
    """Export a float or QAT model to ONNX (``torch.onnx.export``'s arguments, TorchScript exporter).

    Each FakeQuantize becomes one node after the op it quantizes: ``qframe::FakeQuantize`` (attributes
    ``dtype``, ``qmin``, ``qmax``, ``qscheme``, ``ch_axis``, ``scale``, ``state``, ``name``) by default
    (``operator_export_type=OperatorExportTypes.ONNX_FALLTHROUGH``: the file is for viewing), or standard
    ONNX with ``operator_export_type=None`` — use that for hybrid models (``prepare_qat_fx(...,
    hybrid=True)``), whose CPU part must be standard ONNX: int8 fake-quantizes become
    ``QuantizeLinear``/``DequantizeLinear`` pairs, int16 ones ``Div``/``Round``/``Max``/``Min``/``Mul``.
    qframe's float RoIAlign, MultiScaleRoIAlign and AnchorGenerator are single ``qframe::`` nodes in a
    viewing export.  ``example_outputs`` and ``strip_doc_string`` are accepted for the seeds'
    signature and ignored (torch no longer takes them).  The model is not changed.

    Raises:
        TypeError: ``model`` is a converted (integer) model — use :func:`export_quantized_onnx`.
    """
    fn = "export_to_onnx"
    _check_model(model, fn)
    found = _first(model, _is_integer_module)
    if found is not None:
        raise TypeError(f"{fn}: {_describe(*found)} is an integer module of a converted model; export converted "
                        f"models with qframe_core.utils.onnx_helper.export_quantized_onnx (export_to_onnx takes "
                        f"float and QAT models)")
    from ..quantization.fake_quantize import FakeQuantize

    export_type = _export_type(operator_export_type)
    standard = export_type == OperatorExportTypes.ONNX
    work = _copy(model, fn)
    one_node = _float_one_node_classes()
    for name, m in list(work.named_modules()):
        if isinstance(m, FakeQuantize):
            _patch_fake_quant(m, name, standard)
        elif not standard and (isinstance(m, one_node) or _is_qat_one_node(m, one_node)):
            _as_one_node(m, "forward", type(m).__name__, {"name_s": name, **_module_attributes(m)})
    _run_export(fn, work, _normalize_args(args), f, export_params=export_params, verbose=verbose,
                training=training, input_names=input_names, output_names=output_names,
                operator_export_type=export_type, opset_version=opset_version,
                do_constant_folding=do_constant_folding, dynamic_axes=dynamic_axes,
                keep_initializers_as_inputs=bool(keep_initializers_as_inputs), custom_opsets=custom_opsets)
    if enable_onnx_checker:
        _check_file(f)


def _is_qat_one_node(m: nn.Module, one_node: tuple[type, ...]) -> bool:
    from ..nn.qat.base import QATModule

    return isinstance(m, QATModule) and type(m).__name__ in {c.__name__ for c in one_node}


def export_quantized_onnx(
    model: nn.Module,
    args: Any,
    f: Any,
    export_params: bool = True,
    verbose: bool = False,
    training: Any = TrainingMode.EVAL,
    input_names: Optional[list[str]] = None,
    output_names: Optional[list[str]] = None,
    operator_export_type: Any = OperatorExportTypes.ONNX_FALLTHROUGH,
    opset_version: Optional[int] = None,
    do_constant_folding: bool = True,
    example_outputs: Any = None,
    dynamic_axes: Any = None,
    keep_initializers_as_inputs: Optional[bool] = None,
    custom_opsets: Optional[dict[str, int]] = None,
) -> None:
    """Export a converted (integer) model to ONNX, one ``qframe::<Op>`` node per integer op.

    Conv2d, Linear and the add of FloatFunctional are their kernels' operators (``torch.ops.qframe.*``,
    see :func:`register_onnx_ops`); every other integer module (lookup tables, Quantize/DeQuantize,
    softmax, pooling, resize, sub/mul/cat, …) is one node named after its class (FloatFunctional's after
    its method: ``qframe::Mul``, ``qframe::Cat``).  Each node's inputs are the data and the module's
    integer buffers (attribute ``inputs`` names them); the other settings are attributes.  Float modules
    of a hybrid model export as torch exports them.  The model is not changed; the file is for viewing.
    ``example_outputs`` is accepted for the seeds' signature and ignored.

    Raises:
        TypeError: ``model`` is a float or QAT model — use :func:`export_to_onnx` (or ``convert_fx`` first).
    """
    fn = "export_quantized_onnx"
    _check_model(model, fn)
    from ..nn.qat.base import QATModule
    from ..nn.quantized.qfunctional import QFunctional
    from ..nn.quantized.weighted import Conv2d, Linear
    from ..quantization.fake_quantize import FakeQuantize

    found = _first(model, lambda m: isinstance(m, (FakeQuantize, QATModule)))
    if found is not None:
        raise TypeError(f"{fn}: {_describe(*found)} belongs to a QAT model (fake quantization); export float and "
                        f"QAT models with qframe_core.utils.onnx_helper.export_to_onnx, or convert the model with "
                        f"convert_fx first")
    if _first(model, _is_integer_module) is None:
        raise TypeError(f"{fn}: the model has no integer module (it is a float model); export float models with "
                        f"qframe_core.utils.onnx_helper.export_to_onnx, or prepare, calibrate and convert_fx first")
    register_onnx_ops()
    work = _copy(model, fn)
    for name, m in list(work.named_modules()):
        if not _is_integer_module(m) or type(m) in (Conv2d, Linear):
            continue  # Conv2d/Linear: their torch.ops.qframe operators are the nodes
        attributes = {"name_s": name, **_module_attributes(m)}
        if isinstance(m, QFunctional):
            if m.method != "add":  # add is torch.ops.qframe.add
                _as_one_node(m, m.method, m.method[:1].upper() + m.method[1:], attributes)
            continue
        _as_one_node(m, "forward", type(m).__name__, attributes)
    _run_export(fn, work, _normalize_args(args), f, export_params=export_params, verbose=verbose,
                training=training, input_names=input_names, output_names=output_names,
                operator_export_type=_export_type(operator_export_type), opset_version=opset_version,
                do_constant_folding=do_constant_folding, dynamic_axes=dynamic_axes,
                keep_initializers_as_inputs=bool(keep_initializers_as_inputs), custom_opsets=custom_opsets)
