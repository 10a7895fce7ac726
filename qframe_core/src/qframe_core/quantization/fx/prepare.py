"""prepare_qat_fx: float model -> QAT model, as a short list of named passes.

1. trace (:mod:`.tracer`)               4. check every op against the march's table
2. fuse (:mod:`.fuse`)                  5. swap modules for their QAT forms
3. functional ops -> modules            6. bind each QAT module to its input producers

Every decision comes from the registry: which ops fuse, which lower,
what they become, and what the march forbids.
"""

from __future__ import annotations

import builtins
import operator
import warnings
from typing import Any, Optional

import torch
from torch import fx, nn

from ...dtype import QuantDType, qint32
from ...errors import SharedModuleWarning, UnsupportedOpError
from ...lowering import LoweringKind, OpLowering, op_display_name
from ...march import MarchLike, resolve_march
from ...nn import compare, unary
from ...nn.clamp import Clamp
from ...nn.grid_sample import GridSample
from ...nn.pad import Pad
from ...nn.qat.base import OutputView, QATModule
from ...nn.quantized.functional_modules import FloatFunctional
from ...registry import registry
from ..qconfig import QConfig
from ..stubs import DeQuantStub, QuantStub
from .fuse import fuse_graph
from .graph_utils import (
    describe,
    generated_name,
    module_name_of,
    module_of,
    op_key,
    op_nodes,
    quantized_region,
    retarget_module_call,
    scope_of,
    tensor_inputs,
    unique_module_name,
    yields_codes,
)
from .hybrid import insert_hybrid_boundaries
from .qconfig_resolution import QConfigResolver
from .tracer import MODEL_CLASS_KEY, is_torch_stub, name_class_after_model, symbolic_trace
from .wrapped_methods import dequantize_wrapped_inputs

#: functional spellings turned into generated FloatFunctional modules: method -> (functions, tensor methods)
FUNCTIONAL_TO_METHOD: dict[str, tuple[tuple, tuple[str, ...]]] = {
    "add": ((operator.add, torch.add, operator.iadd), ("add",)),
    "sub": ((operator.sub, torch.sub, operator.isub), ("sub",)),
    "mul": ((operator.mul, torch.mul, operator.imul), ("mul",)),
    "cat": ((torch.cat, torch.concat), ()),
    "matmul": ((torch.matmul, operator.matmul), ("matmul",)),
    "sum": ((torch.sum,), ("sum",)),
    "mean": ((torch.mean,), ("mean",)),
    "maximum": ((torch.maximum,), ("maximum",)),
    "minimum": ((torch.minimum,), ("minimum",)),
}

#: clamp spellings turned into generated Clamp modules when their bounds are constants
CLAMP_FUNCTIONS: dict[Any, str] = {torch.clamp: "clamp", torch.clip: "clip"}

#: functional pooling turned into its module (then looked up in the op table) when its arguments are
#: constants: function -> (module class, the function's parameters after the input, in order)
POOL_FUNCTIONS: dict[Any, tuple[type, tuple[str, ...]]] = {
    torch.nn.functional.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",)),
    torch.nn.functional.avg_pool2d: (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode",
                                                    "count_include_pad", "divisor_override")),
    torch.nn.functional.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                                    "return_indices")),
}

DEFAULT_WAY_OUT = ("run it on the CPU with prepare_qat_fx(..., hybrid=True), keep it outside the "
                   "QuantStub/DeQuantStub region (float), or change the model to use an op the march supports")


def is_quant_stub(m: nn.Module) -> bool:
    return isinstance(m, QuantStub) or (is_torch_stub(m) and type(m).__name__ == "QuantStub")


def is_dequant_stub(m: nn.Module) -> bool:
    return isinstance(m, DeQuantStub) or (is_torch_stub(m) and type(m).__name__ == "DeQuantStub")


# -- pass 3 -----------------------------------------------------------------------------
def _functional_method(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    two_tensors = len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args) and not node.kwargs
    if two_tensors and ((node.op == "call_function" and node.target in (torch.max, torch.min))
                        or (node.op == "call_method" and node.target in ("max", "min")
                            and module_of(gm, node) is None)):
        return "maximum" if node.target in (torch.max, "max") else "minimum"  # torch.max(a, b) is element-wise
    for method, (functions, tensor_methods) in FUNCTIONAL_TO_METHOD.items():
        if node.op == "call_function" and node.target in functions:
            return method
        if node.op == "call_method" and node.target in tensor_methods and module_of(gm, node) is None:
            return method
    return None


def _scalar_call(method: str, node: fx.Node) -> Optional[tuple[str, fx.Node, float]]:
    """``x + c``, ``c + x``, ``x - c``, ``x * c``, ``c * x`` with a number ``c``: (FloatFunctional method, x, c)."""
    if node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    if isinstance(a, fx.Node) and isinstance(b, (int, float)) and not isinstance(b, bool):
        x, c = a, float(b)
    elif isinstance(b, fx.Node) and isinstance(a, (int, float)) and not isinstance(a, bool) and method != "sub":
        x, c = b, float(a)
    else:
        return None
    if method == "mul":
        return "mul_scalar", x, c
    return "add_scalar", x, (-c if method == "sub" else c)


def _functional_args(method: str, node: fx.Node) -> Optional[tuple[tuple, dict]]:
    """Arguments for the FloatFunctional method, or None when the call is not tensor-on-tensor."""
    if method == "cat":
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) for t in tensors):
            return None
        return (list(tensors),), {"dim": dim}
    if method in ("sum", "mean"):
        if not node.args or not isinstance(node.args[0], fx.Node) or "dtype" in node.kwargs:
            return None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if any(isinstance(a, fx.Node) for a in (dim, keepdim)):
            return None
        return (node.args[0],), {"dim": dim, "keepdim": keepdim}
    if node.kwargs or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return None  # a constant operand: no generated module (the op table decides whether it can run)
    return tuple(node.args), {}


def _unary_name(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    if node.op == "call_function" and node.target in unary.FUNCTION_ALIASES:
        return unary.FUNCTION_ALIASES[node.target]
    if node.op == "call_method" and node.target in unary.METHOD_NAMES and module_of(gm, node) is None:
        return str(node.target)
    return None


def _interpolate_module(node: fx.Node) -> Optional[nn.Module]:
    """``F.interpolate(x, size=…|scale_factor=…, mode=…)`` with constant arguments as an ``nn.Upsample``."""
    if node.op != "call_function" or node.target is not torch.nn.functional.interpolate:
        return None
    if not node.args or not isinstance(node.args[0], fx.Node) or len(node.args) > 4:
        return None
    names = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")
    kwargs = dict(zip(names, node.args[1:]))
    kwargs.update({k: v for k, v in node.kwargs.items() if k in names})
    if node.kwargs.get("antialias") or set(node.kwargs) - set(names) - {"antialias"} \
            or any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None
    return nn.Upsample(**kwargs)


def _pool_module(node: fx.Node) -> Optional[tuple[str, nn.Module]]:
    """``F.adaptive_avg_pool2d(x, 1)``, ``F.avg_pool2d(x, 2)``, ``F.max_pool2d(x, 3, 2, 1)`` … with constant
    arguments as (stem, their ``nn`` module), as torchvision's MobileNetV2 writes its global pooling."""
    if node.op != "call_function" or node.target not in POOL_FUNCTIONS:
        return None
    cls, names = POOL_FUNCTIONS[node.target]
    if not node.args or not isinstance(node.args[0], fx.Node) or len(node.args) > len(names) + 1 \
            or set(node.kwargs) - set(names):
        return None
    kwargs = dict(zip(names, node.args[1:]))
    kwargs.update(node.kwargs)
    if kwargs.get("return_indices") or any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None
    if "stride" in kwargs and kwargs["stride"] is None:
        del kwargs["stride"]  # the functional default (stride = kernel_size), as the module spells it
    return node.target.__name__, cls(**kwargs)


def _pad_module(node: fx.Node) -> Optional[nn.Module]:
    """``F.pad(x, pad, mode, value)`` with constant arguments as a :class:`~qframe_core.nn.pad.Pad`."""
    if node.op != "call_function" or node.target is not torch.nn.functional.pad or not node.args \
            or not isinstance(node.args[0], fx.Node):
        return None
    kwargs = dict(zip(("pad", "mode", "value"), node.args[1:]))
    kwargs.update(node.kwargs)
    if set(kwargs) - {"pad", "mode", "value"} or any(isinstance(v, fx.Node) for v in kwargs.values()) \
            or not isinstance(kwargs.get("pad"), (list, tuple)) or any(isinstance(p, fx.Node) for p in kwargs["pad"]):
        return None
    return Pad(kwargs["pad"], kwargs.get("mode", "constant"), kwargs.get("value"))


def _grid_sample_module(node: fx.Node) -> Optional[nn.Module]:
    """``F.grid_sample(x, grid, mode, padding_mode, align_corners)`` with constant arguments as a
    :class:`~qframe_core.nn.GridSample` (called with ``(x, grid)``)."""
    if node.op != "call_function" or node.target is not torch.nn.functional.grid_sample or len(node.args) < 2 \
            or not all(isinstance(a, fx.Node) for a in node.args[:2]):
        return None
    names = ("mode", "padding_mode", "align_corners")
    kwargs = dict(zip(names, node.args[2:]))
    kwargs.update(node.kwargs)
    if len(node.args) > 5 or set(kwargs) - set(names) or any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None
    return GridSample(**kwargs)


def _clamp_module(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    """A Clamp (or ReLU6) module for ``torch.clamp(x, lo, hi)``, ``x.clip(...)``, ``F.relu6(x)`` with constant bounds."""
    if node.op == "call_function" and node.target is torch.nn.functional.relu6:
        return nn.ReLU6() if node.args and isinstance(node.args[0], fx.Node) else None
    if node.op == "call_function" and node.target in CLAMP_FUNCTIONS:
        name = CLAMP_FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target in ("clamp", "clip") and module_of(gm, node) is None:
        name = str(node.target)
    else:
        return None
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    if not all(v is None or isinstance(v, (int, float)) for v in (lo, hi)) or (lo is None and hi is None):
        return None  # tensor bounds: not lowered
    return Clamp(lo, hi, name)


_MIRRORED = {"eq": "eq", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge", "greater": "less", "less": "greater",
             "greater_equal": "less_equal", "less_equal": "greater_equal"}


def _compare_module(gm: fx.GraphModule, node: fx.Node, region: set[fx.Node]) -> Optional[tuple[nn.Module, tuple]]:
    """A comparison of a quantized value (``x > y``, ``torch.eq(x, 0.5)``, ``0 < x``): (Compare module, args)."""
    if node.op == "call_function" and node.target in compare.FUNCTION_ALIASES:
        name = compare.FUNCTION_ALIASES[node.target]
    elif node.op == "call_method" and node.target in compare.METHOD_NAMES and module_of(gm, node) is None:
        name = str(node.target)
    else:
        return None
    args = list(node.args) + ([node.kwargs["other"]] if "other" in node.kwargs else [])
    if len(args) != 2 or set(node.kwargs) - {"other"}:
        return None
    a, b = args
    number = (int, float)
    if isinstance(a, fx.Node) and a in region and isinstance(b, fx.Node):
        return compare.Compare(name), (a, b)
    if isinstance(a, fx.Node) and a in region and isinstance(b, number) and not isinstance(b, bool):
        return compare.Compare(name, b), (a,)
    if isinstance(b, fx.Node) and b in region and isinstance(a, number) and not isinstance(a, bool):
        return compare.Compare(_MIRRORED[name], a), (b,)
    return None


def _composite_module(gm: fx.GraphModule, node: fx.Node) -> Optional[tuple[str, nn.Module]]:
    """``F.softmax``/``torch.softmax``/``x.softmax(dim)``, ``F.glu(x, dim)`` and ``F.layer_norm(x, shape, weight,
    bias, eps)`` with constant arguments (weight and bias: parameters or None) as (stem, their ``nn`` module)."""
    functional = torch.nn.functional
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_function" and node.target in (functional.softmax, torch.softmax):
        names: tuple[str, ...] = ("dim", "_stacklevel", "dtype") if node.target is functional.softmax else ("dim", "dtype")
    elif node.op == "call_method" and node.target == "softmax" and module_of(gm, node) is None:
        names = ("dim", "dtype")
    elif node.op == "call_function" and node.target is functional.glu:
        names = ("dim",)
    elif node.op == "call_function" and node.target is functional.layer_norm:
        names = ("normalized_shape", "weight", "bias", "eps")
    else:
        return None
    if len(node.args) > len(names) + 1 or set(node.kwargs) - set(names):
        return None
    kwargs = dict(zip(names, node.args[1:]))
    kwargs.update(node.kwargs)
    params = {k: kwargs.pop(k, None) for k in ("weight", "bias")}
    if any(isinstance(v, fx.Node) for v in kwargs.values()) or kwargs.get("dtype") is not None or \
            any(isinstance(v, fx.Node) and v.op != "get_attr" for v in params.values()):
        return None
    if "normalized_shape" in names:
        shape = kwargs.get("normalized_shape")
        shape = (shape,) if isinstance(shape, int) else shape
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) for s in shape):
            return None
        tensors: dict[str, Any] = {}
        for k, v in params.items():
            tensors[k] = gm if v is not None else None
            for part in str(v.target).split(".") if v is not None else ():
                tensors[k] = getattr(tensors[k], part)
        affine = tensors["weight"] is not None or tensors["bias"] is not None
        ln = nn.LayerNorm(tuple(shape), eps=1e-5 if kwargs.get("eps") is None else float(kwargs["eps"]), elementwise_affine=affine,
                          bias=tensors["bias"] is not None)
        with torch.no_grad():
            if tensors["weight"] is not None:
                ln.weight.copy_(tensors["weight"])
            if tensors["bias"] is not None:
                ln.bias.copy_(tensors["bias"])
        return "layer_norm", ln
    if "_stacklevel" in names or "dtype" in names:
        return "softmax", nn.Softmax(dim=kwargs.get("dim"))
    return "glu", nn.GLU(dim=kwargs.get("dim", -1))


def module_form(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    """The module a functional op becomes in fx mode, as a user would write it (eager mode's advice)."""
    composite = _composite_module(gm, node)
    if composite is not None:
        return f"nn.{type(composite[1]).__name__}(...)"
    name = _unary_name(gm, node)
    if name is not None:
        return f"qframe_core.nn.{name.capitalize()}()" if name in unary.NAMED_UNARY else f"qframe_core.nn.Unary({name!r})"
    if _interpolate_module(node) is not None:
        return "qframe_core.nn.Interpolate(...)"
    if _pad_module(node) is not None:
        return "qframe_core.nn.pad.Pad(pad, mode, value)"
    if _grid_sample_module(node) is not None:
        return "qframe_core.nn.GridSample(mode, padding_mode, align_corners)"
    clamp = _clamp_module(gm, node)
    if clamp is not None:
        return "nn.ReLU6()" if isinstance(clamp, nn.ReLU6) else "qframe_core.nn.clamp.Clamp(min, max)"
    if _compare_module(gm, node, set(tensor_inputs(node))) is not None:
        return "qframe_core.nn.compare.Compare(name, value)"
    method = _functional_method(gm, node)
    if method is not None:
        scalar = _scalar_call(method, node) if method in ("add", "sub", "mul") else None
        return f"FloatFunctional().{scalar[0] if scalar else method}"
    return None


def _replace_with_module(gm: fx.GraphModule, node: fx.Node, stem: str, module: nn.Module,
                         method: Optional[str], args: tuple, kwargs: dict) -> None:
    name = generated_name(gm, scope_of(node), stem)
    gm.add_submodule(name, module)
    # the node itself becomes the module call, so it keeps the name the trace gave it (``selu_1``): names
    # derived from it later — hybrid boundaries such as ``selu_1_activation_post_process`` — are the seeds'
    if method is None:
        node.op, node.target = "call_module", name
    else:
        with gm.graph.inserting_before(node):
            owner = gm.graph.get_attr(name)
        node.op, node.target = "call_method", method
        args = (owner, *args)
    node.args, node.kwargs = tuple(args), dict(kwargs)


DIV_FUNCTIONS = (operator.truediv, torch.div, torch.true_divide)


def _rewrite_div(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``x / c`` -> ``mul_scalar(x, 1/c)``; ``a / b`` -> ``a * reciprocal(b)`` (a reciprocal table and a
    multiply, each with its own output scale: the seeds' horizon.nn.Div).  True when rewritten."""
    is_div = (node.op == "call_function" and node.target in DIV_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("div", "true_divide") and module_of(gm, node) is None)
    if not is_div or node.kwargs or len(node.args) != 2 or not isinstance(node.args[0], fx.Node):
        return False
    a, b = node.args
    if isinstance(b, (int, float)) and not isinstance(b, bool) and b != 0:
        _replace_with_module(gm, node, "mul_scalar", FloatFunctional(), "mul_scalar", (a, 1.0 / float(b)), {})
        return True
    if not isinstance(b, fx.Node):
        return False
    name = generated_name(gm, scope_of(node), "reciprocal")
    gm.add_submodule(name, unary.Unary("reciprocal"))
    with gm.graph.inserting_before(node):
        reciprocal = gm.graph.call_module(name, (b,))
    reciprocal.meta = dict(node.meta)
    _replace_with_module(gm, node, "mul", FloatFunctional(), "mul", (a, reciprocal), {})
    return True


def functionals_to_modules(gm: fx.GraphModule) -> fx.GraphModule:
    """Give every tensor ``a + b``, ``a - b``, ``a * b``, ``torch.cat`` its own generated FloatFunctional,
    and every functional non-linear op (``torch.exp``, ``x.sigmoid()``, ``F.silu`` …) a generated ``Unary``.

    The module is named ``_generated_<op>_N`` inside the module where the op
    was written, so ``module_name`` qconfigs of that module apply to it.
    """
    # comparisons only where they compare quantized values (elsewhere they may compare shapes)
    region = quantized_region(gm, is_quant_stub, is_dequant_stub)
    for node in list(gm.graph.nodes):
        if _rewrite_div(gm, node):
            continue
        comparison = _compare_module(gm, node, region)
        if comparison is not None:
            _replace_with_module(gm, node, comparison[0].name, comparison[0], None, comparison[1], {})
            continue
        name = _unary_name(gm, node)
        if name is not None:
            rest = list(node.args[1:])
            if node.args and isinstance(node.args[0], fx.Node) and not any(isinstance(a, fx.Node) for a in rest) \
                    and not any(isinstance(v, fx.Node) for v in node.kwargs.values()):
                _replace_with_module(gm, node, name, unary.Unary(name, *rest, **dict(node.kwargs)), None,
                                     (node.args[0],), {})
            continue
        upsample = _interpolate_module(node)
        if upsample is not None:
            _replace_with_module(gm, node, "interpolate", upsample, None, (node.args[0],), {})
            continue
        pad = _pad_module(node)
        if pad is not None:
            _replace_with_module(gm, node, "pad", pad, None, (node.args[0],), {})
            continue
        sampler = _grid_sample_module(node)
        if sampler is not None:
            _replace_with_module(gm, node, "grid_sample", sampler, None, tuple(node.args[:2]), {})
            continue
        composite = _composite_module(gm, node)
        if composite is not None:
            constants = [a for a in node.all_input_nodes if a.op == "get_attr"]  # F.layer_norm's weight and bias
            _replace_with_module(gm, node, composite[0], composite[1], None, (node.args[0],), {})
            for const in constants:
                if not const.users:
                    gm.graph.erase_node(const)
            continue
        pool = _pool_module(node)
        if pool is not None:
            _replace_with_module(gm, node, pool[0], pool[1], None, (node.args[0],), {})
            continue
        clamp = _clamp_module(gm, node)
        if clamp is not None:
            _replace_with_module(gm, node, getattr(clamp, "name", "relu6"), clamp, None, (node.args[0],), {})
            continue
        method = _functional_method(gm, node)
        scalar = _scalar_call(method, node) if method in ("add", "sub", "mul") else None
        if scalar is not None:
            _replace_with_module(gm, node, scalar[0], FloatFunctional(), scalar[0], (scalar[1], scalar[2]), {})
            continue
        call = _functional_args(method, node) if method else None
        if call is not None:
            _replace_with_module(gm, node, method, FloatFunctional(), method, call[0], call[1])
    gm.graph.lint()
    gm.recompile()
    return gm


# -- passes 4-6 ---------------------------------------------------------------------------
def _producer_dtype(m: nn.Module) -> QuantDType:
    if not hasattr(m, "activation_post_process") and getattr(m, "_input_producers", None):
        return _producer_dtype(m._input_producers[0])  # scale-preserving: its input's dtype
    fq = getattr(m, "activation_post_process", None)
    return fq.dtype if fq is not None else qint32


class _Problems:
    def __init__(self, march: str) -> None:
        self.march = march
        self.items: list[str] = []

    def add(self, what: str, rule: str, way_out: str = DEFAULT_WAY_OUT) -> None:
        self.items.append(f"- {what}: {rule}. Way out: {way_out}")

    def raise_if_any(self) -> None:
        if self.items:
            raise UnsupportedOpError(
                f"march {self.march!r} cannot run {len(self.items)} op(s) of this model:\n" + "\n".join(self.items))


def _feeds_only_outputs(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True when every use of ``node`` leads straight out of the model (via DeQuantStubs, indexing, fields)."""
    for user in node.users:
        if user.op == "output":
            continue
        mod = module_of(gm, user)
        through = (mod is not None and is_dequant_stub(mod)) or (
            user.op == "call_function" and user.target in (operator.getitem, builtins.getattr))
        if not through or not _feeds_only_outputs(gm, user):
            return False
    return True


def _lowering_for(gm: fx.GraphModule, node: fx.Node, march: str) -> tuple[Any, Optional[OpLowering]]:
    key = op_key(gm, node)
    return key, registry.lowering(march, key)


def _check_and_swap(gm: fx.GraphModule, march: str, resolver: QConfigResolver,
                    qat_classes: Optional[dict[type, type]] = None) -> dict[str, Any]:
    """Check every op of the quantized region against the march's table, then swap modules for QAT forms.

    ``qat_classes`` (eager ``prepare_qat``'s ``mapping``) overrides the QAT class of a float type.
    Returns ``{module name: op key}`` of the swapped modules.
    """
    region = quantized_region(gm, is_quant_stub, is_dequant_stub)
    problems = _Problems(march)
    swaps: dict[str, tuple[OpLowering, nn.Module, QConfig]] = {}
    float_ops: dict[str, Any] = {}
    shared: dict[str, list[str]] = {}  # first call site's module name -> names given to the other call sites
    for node in op_nodes(gm):
        mod = module_of(gm, node)
        name = module_name_of(node)
        in_region = node in region or (mod is not None and is_dequant_stub(mod) and
                                       any(i in region and yields_codes(gm, i) for i in tensor_inputs(node)))
        if not in_region:
            continue
        key, lowering = _lowering_for(gm, node, march)
        if node.op == "call_method" and node.target in ("sum", "mean") and mod is not None:
            dim = node.kwargs.get("dim")
            dims = () if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
            # the op tables state allowed dims for 4-D [N, C, H, W] tensors: read negative dims that way
            mod.reduce_dims = tuple(sorted(d % 4 for d in dims)) if dims else (0, 1, 2, 3)
        if lowering is None:
            problems.add(describe(gm, node), f"{op_display_name(key)} is not in march {march!r}'s op table")
            continue
        if lowering.kind is LoweringKind.UNSUPPORTED:
            problems.add(describe(gm, node), lowering.note or "not supported", lowering.way_out or DEFAULT_WAY_OUT)
            continue
        if lowering.output_only and not _feeds_only_outputs(gm, node):
            problems.add(describe(gm, node), f"{lowering.op_name} may only be a model output (op table: "
                         f"只能作为模型输出) but feeds {', '.join(sorted(u.name for u in node.users))}",
                         "return its result from the model (through a DeQuantStub), and compute on it after the model")
        for violation in lowering.violations(mod):
            problems.add(describe(gm, node), f"{violation} (march {march!r} op table)", lowering.way_out or
                         "change the layer's parameters to fit the limit, or keep it out of the quantized region")
        if lowering.kind is LoweringKind.PASSTHROUGH:
            continue
        if name is None or mod is None:  # only in eager mode: fx mode made every such op a module
            problems.add(describe(gm, node), "eager mode quantizes modules only, and this op is a function call",
                         f"use {module_form(gm, node) or 'its module form'} in the model, or the fx mode "
                         f"(prepare_qat_fx), which makes these modules itself")
            continue
        if name in swaps and is_dequant_stub(mod) and node.op == "call_module":
            # a DeQuantStub has no parameters of its own: each extra call site gets its own copy
            name = unique_module_name(gm, f"{name}_{len([n for n in swaps if n.startswith(name)])}")
            gm.add_submodule(name, type(mod)())
            node.target = name
            mod = gm.get_submodule(name)
        config_name = getattr(mod, "qconfig_source", None) or name
        if name in swaps:
            # a shared module: each further call site gets its own QAT module (its own quantization
            # parameters, since the input scale may differ per call), with the parameters tied to the first
            first = name
            name = unique_module_name(gm, f"{first}_{len(shared.get(first, [])) + 1}")
            gm.add_submodule(name, mod)
            owner = node.args[0] if node.op == "call_method" else None
            retarget_module_call(gm, node, name)
            if owner is not None and not owner.users:
                gm.graph.erase_node(owner)
            shared.setdefault(first, []).append(name)
        # a fused module named after its add takes the qconfig of the conv/linear it was built from
        qconfig = resolver.qconfig_for(config_name, mod)
        if qconfig is None:
            problems.add(describe(gm, node), "its qconfig is None but it sits inside the quantized region",
                         "give it a qconfig, or place a DeQuantStub before it and a QuantStub after it")
            continue
        swaps[name] = (lowering, mod, qconfig)
        float_ops[name] = key
    problems.raise_if_any()

    for name, (lowering, mod, qconfig) in swaps.items():
        qat = (qat_classes or {}).get(type(mod), lowering.qat_module).from_float(mod, qconfig, march)
        if isinstance(qat, QATModule):
            qat.set_names(name)
        if getattr(mod, "preserve_qat_mode", False):
            qat.preserve_qat_mode = True
        # a module without activation_post_process (ReLU6, …) outputs its input's dtype: checked at binding
        has_own_output = hasattr(qat, "activation_post_process")
        out_dtype = _producer_dtype(qat)
        if has_own_output and lowering.output_dtypes and out_dtype not in lowering.output_dtypes:
            problems.add(f"{name!r} ({lowering.op_name})", f"output dtype {out_dtype} is not supported on march "
                         f"{march!r} (allowed: {', '.join(map(str, lowering.output_dtypes))})",
                         "use a qconfig with an allowed activation dtype")
        gm.add_submodule(name, qat)
    problems.raise_if_any()
    for first, others in shared.items():
        for other in others:
            tie_parameters(gm.get_submodule(first), gm.get_submodule(other))
        warnings.warn(
            f"module {first!r} is called {1 + len(others)} times in forward (a shared op; the seeds forbid calling "
            f"one FloatFunctional more than once). qframe quantizes each call separately as "
            f"{', '.join(map(repr, [first, *others]))}, with the trainable parameters shared; give each call site "
            f"its own module to make this explicit", SharedModuleWarning, stacklevel=4)
    return float_ops


def tie_parameters(source: nn.Module, target: nn.Module) -> None:
    """Make ``target`` use ``source``'s parameter objects (same names), so a shared layer keeps one set of weights."""
    for path, param in list(source.named_parameters()):
        owner_path, _, leaf = path.rpartition(".")
        owner = target.get_submodule(owner_path) if owner_path else target
        if isinstance(getattr(owner, leaf, None), nn.Parameter):
            setattr(owner, leaf, param)


def _producer(gm: fx.GraphModule, node: fx.Node, march: str, consumer: str) -> nn.Module:
    """The module whose output quantization the value of ``node`` carries (through passthrough ops)."""
    cur = node
    while True:
        mod = module_of(gm, cur)
        if mod is not None and hasattr(mod, "output_params"):
            return mod
        if (cur.op == "call_function" and cur.target is operator.getitem and isinstance(cur.args[1], int)
                and isinstance(cur.args[0], fx.Node)):
            owner = module_of(gm, cur.args[0])
            if owner is not None and hasattr(owner, "output_params_at"):
                return OutputView(owner, cur.args[1])  # one output of a module with several (LSTMCell's h, c)
        key, lowering = _lowering_for(gm, cur, march)
        ins = tensor_inputs(cur)
        if lowering is not None and lowering.kind is LoweringKind.PASSTHROUGH and ins:
            cur = ins[0]
            continue
        raise UnsupportedOpError(
            f"{consumer}: its input {cur.name!r} ({op_display_name(key) if key else cur.op}) carries no "
            f"quantization on march {march!r}: put a QuantStub before the quantized part of the model"
        )


def _bind_segment_boundary(gm: fx.GraphModule, node: fx.Node, mod: nn.Module, march: str, name: str) -> None:
    """A QuantStub fed by a quantized value marks a segment boundary: it records that value's scale."""
    ins = tensor_inputs(node)
    if not ins:
        return
    try:
        producer = _producer(gm, ins[0], march, f"{name!r}")
    except UnsupportedOpError:
        return  # a float input: an ordinary QuantStub
    if mod.activation_post_process.fixed_scale:
        raise UnsupportedOpError(
            f"{name!r}: a QuantStub inside the quantized region (a segment boundary) records the scale of its "
            f"input, so it cannot have a fixed scale: create it with QuantStub(scale=None)")
    mod.bind_inputs([producer])


def _bind_inputs(gm: fx.GraphModule, march: str, float_ops: dict[str, Any]) -> None:
    problems = _Problems(march)
    for node in op_nodes(gm):
        mod = module_of(gm, node)
        name = module_name_of(node)
        if not isinstance(mod, QATModule) or name not in float_ops:
            continue
        if float_ops[name] is QuantStub or (isinstance(float_ops[name], type) and float_ops[name].__name__ == "QuantStub"):
            _bind_segment_boundary(gm, node, mod, march, name)
            continue
        inputs = tensor_inputs(node)
        if getattr(mod, "quantized_inputs", None) is not None:
            inputs = inputs[:mod.quantized_inputs]  # the rest (attention masks) are not quantized
        producers = [_producer(gm, i, march, f"{name!r}") for i in inputs]
        mod.bind_inputs(producers)
        if node.op == "call_method":
            mod.method = str(node.target)
            if mod.method in ("mul_scalar", "add_scalar"):
                mod.scalar = float(node.args[2])
            if mod.method in ("sum", "mean"):
                dim = node.kwargs.get("dim")
                mod.reduce_dims = () if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
                mod.keepdim = bool(node.kwargs.get("keepdim", False))
        lowering = registry.lowering(march, float_ops[name])
        for i, p in enumerate(producers):
            dt = _producer_dtype(p)
            if lowering is not None and lowering.input_dtypes and dt not in lowering.input_dtypes:
                problems.add(f"{name!r} ({lowering.op_name}) input {i}", f"dtype {dt} is not accepted on march "
                             f"{march!r} (accepted: {', '.join(map(str, lowering.input_dtypes))})",
                             "a high-precision (qint32) output may only feed a DeQuantStub; otherwise use an "
                             "accepted activation dtype")
        per_input = [lim for lim in (lowering.limits if lowering is not None else ()) if hasattr(lim, "violated_by_dtypes")]
        for lim in per_input:  # a rule on one input's dtype (grid_sample: "input：qint8", grid qint8/qint16)
            broken = lim.violated_by_dtypes([_producer_dtype(p) for p in producers])
            if broken is not None:
                problems.add(f"{name!r} ({lowering.op_name})", f"{broken} (march {march!r} op table)",
                             "quantize that input with an accepted dtype (its producer's qconfig)")
    problems.raise_if_any()


def share_cat_scales(gm: fx.GraphModule, march: str) -> list[str]:
    """``optimize_graph``: a cat's inputs and output share one scale.

    Each producer of a cat input whose output feeds only that cat gets the cat's
    output fake-quantize (one module, observed from both sides), so the integer
    concatenation copies codes unchanged.  Returns the producers that now share.
    """
    shared = []
    for node in op_nodes(gm):
        cat = module_of(gm, node)
        if node.op != "call_method" or node.target != "cat" or not isinstance(cat, QATModule):
            continue
        for value in tensor_inputs(node):
            if len(value.users) != 1 or value.op != "call_module":
                continue
            producer = gm.get_submodule(value.target)
            fq = getattr(producer, "activation_post_process", None)
            if not isinstance(producer, QATModule) or fq is None or fq.fixed_scale:
                continue
            producer.activation_post_process = cat.activation_post_process
            shared.append(str(value.target))
    return shared


def _prepare_graph(gm: fx.GraphModule, march: str, resolver: Any, optimize_graph: bool, hybrid: bool,
                   hybrid_dict: Optional[dict]) -> fx.GraphModule:
    """Passes 2-6 on a traced model; modules only ``fx_wrap``-ed methods call are prepared as sub-models."""
    if gm.meta.get("qframe_fused_for") != march:
        fuse_graph(gm, march)
    functionals_to_modules(gm)
    dequantize_wrapped_inputs(gm)
    cpu_ops = insert_hybrid_boundaries(gm, march, resolver, hybrid_dict) if hybrid else []
    float_ops = _check_and_swap(gm, march, resolver)
    _bind_inputs(gm, march, float_ops)
    if optimize_graph:
        share_cat_scales(gm, march)
    gm.meta["qframe_march"] = march
    gm.meta["qframe_stage"] = "qat"
    gm.meta["qframe_float_ops"] = float_ops
    gm.meta["qframe_cpu_ops"] = cpu_ops
    for path in gm.meta.get("qframe_wrapped_only", []):
        sub = gm.get_submodule(path)
        # a module called only inside a wrapped method is quantized when it holds a quantized region of its
        # own (hybrid boundaries are not inserted there: its stubs delimit it)
        if any(is_quant_stub(m) for m in sub.modules()):
            gm.add_submodule(path, _prepare_graph(symbolic_trace(sub), march, resolver.scoped(path),
                                                  optimize_graph, False, None))
    gm.recompile()
    return gm


def prepare_qat_fx(
    model: nn.Module,
    qconfig_dict: Optional[dict] = None,
    prepare_custom_config_dict: Optional[dict] = None,
    optimize_graph: bool = False,
    hybrid: bool = False,
    hybrid_dict: Optional[dict] = None,
    march: Optional[MarchLike] = None,
) -> fx.GraphModule:
    """Turn a float model into a QAT (or calibration) model for the current march.

    Args:
        model: float model with QuantStub/DeQuantStub marking the quantized region.
        qconfig_dict: ``{"": qconfig, "module_type": {...}, "module_name": {...}}``
            (see :mod:`.qconfig_resolution`); modules may also carry ``.qconfig``.
        prepare_custom_config_dict: ``{"preserved_attributes": [names]}`` copies
            those attributes of ``model`` onto the result.
        optimize_graph: give each ``cat`` and the ops producing its inputs one shared output
            fake-quantize, so the concatenation needs no requantization (see :func:`share_cat_scales`).
        hybrid: keep ops the march cannot run (and those of ``hybrid_dict``) float, inserting
            ``<op>_input_dequant`` / ``<producer>_activation_post_process`` boundaries
            (see :mod:`.hybrid`); without it such ops are an error.
        hybrid_dict: ``{"module_name": [...], "module_type": [...]}`` of ops to run on the CPU.
        march: overrides the current march.

    Returns:
        A GraphModule whose FakeQuantize modules start in QAT state, named after ``model``'s class
        (recorded in ``meta["qframe_model_class"]``).

    Raises:
        UnsupportedOpError: listing every op the march cannot run, with the rule and the way out.
        TraceError: when torch.fx cannot trace the model.
    """
    spec = resolve_march(march)
    if hybrid_dict and not hybrid:
        raise ValueError("prepare_qat_fx: hybrid_dict is only used with hybrid=True")
    resolver = QConfigResolver(model, qconfig_dict)
    resolver.check_kinds()
    preserved = list((prepare_custom_config_dict or {}).get("preserved_attributes", []))
    gm = _prepare_graph(symbolic_trace(model), spec.name, resolver, optimize_graph, hybrid, hybrid_dict)
    # the float model's class name (recorded when traced; a GraphModule given as the model keeps its own
    # record): convert_fx, check/compile/perf_model name the model and its reports after it
    gm.meta.setdefault(MODEL_CLASS_KEY, type(model).__name__)
    name_class_after_model(gm)
    for attr in preserved:
        setattr(gm, attr, getattr(model, attr))
    return gm
