"""Pass 1: trace a float model into a GraphModule.

qframe's modules (stubs, fused, QAT, FloatFunctional) are leaves; when
tracing fails the error names the offending source line and the way out.
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from typing import Any, Iterator, Optional

from torch import fx, nn

from ...errors import TraceError
from .wrapped_methods import install_wrapped_methods

try:  # torch.ao's stubs are accepted as well
    from torch.ao.quantization import DeQuantStub as _TorchDeQuantStub
    from torch.ao.quantization import QuantStub as _TorchQuantStub

    _TORCH_STUBS: tuple = (_TorchQuantStub, _TorchDeQuantStub)
except ImportError:  # pragma: no cover
    _TORCH_STUBS = ()


try:  # torch.ao's FloatFunctional: the seeds list its add among the fusable add spellings
    from torch.ao.nn.quantized import FloatFunctional as _TorchFloatFunctional
except ImportError:  # pragma: no cover
    _TorchFloatFunctional = None

#: torch.ao FloatFunctional methods recorded as one ``call_method`` node (as qframe's own FloatFunctional is)
_TORCH_FF_METHODS = ("add", "mul", "cat", "add_scalar", "mul_scalar")


@contextlib.contextmanager
def _torch_float_functional_recorded() -> Iterator[None]:
    """While tracing, torch.ao FloatFunctional calls become ``call_method`` nodes instead of being traced
    through (into ``torch.add`` and its Identity ``activation_post_process``), so they fuse and lower
    exactly like qframe's FloatFunctional."""
    if _TorchFloatFunctional is None:
        yield
        return
    from ...nn.quantized.functional_modules import traced_method_call

    originals = {m: getattr(_TorchFloatFunctional, m) for m in _TORCH_FF_METHODS}

    def recorded(method: str, original: Any) -> Any:
        @functools.wraps(original)
        def call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            traced = traced_method_call(self, method, args, kwargs)
            return traced if traced is not None else original(self, *args, **kwargs)
        return call

    try:
        for m, original in originals.items():
            setattr(_TorchFloatFunctional, m, recorded(m, original))
        yield
    finally:
        for m, original in originals.items():
            setattr(_TorchFloatFunctional, m, original)


class QuantizationTracer(fx.Tracer):
    """A tracer that keeps qframe modules (and torch.ao's stubs and FloatFunctional) as single nodes."""

    def trace(self, root: Any, concrete_args: Optional[dict[str, Any]] = None) -> fx.Graph:
        with _torch_float_functional_recorded():
            return super().trace(root, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if getattr(type(m), "_qframe_leaf", False) or isinstance(m, _TORCH_STUBS) or (
                _TorchFloatFunctional is not None and isinstance(m, _TorchFloatFunctional)):
            return True
        if hasattr(type(m), "lowering_key"):  # an op of the op tables (qframe_core.nn.Interpolate: nn.Upsample's row)
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(exc: BaseException, model: nn.Module) -> tuple[Optional[traceback.FrameSummary], str]:
    """The innermost frame of user code in the traceback, and the name of the module whose method it is
    (``Block.forward`` of a submodule, not the top-level model's name), e.g. ``"layer1 (Block).forward"``."""
    tb, user = exc.__traceback__, None
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/torch/" not in path and "/qframe_core/" not in path:
            user = tb
        tb = tb.tb_next
    if user is None:
        return None, f"{type(model).__name__}.forward"
    fr = traceback.extract_tb(user, limit=1)[0]
    owner = user.tb_frame.f_locals.get("self")
    if not isinstance(owner, nn.Module):
        return fr, f"{fr.name}()"
    path = next((n for n, m in model.named_modules() if m is owner), None)
    label = type(owner).__name__ if not path else f"{path!r} ({type(owner).__name__})"
    return fr, f"{label}.{fr.name}"


def symbolic_trace(model: nn.Module, concrete_args: Optional[dict[str, Any]] = None) -> fx.GraphModule:
    """Trace ``model`` with :class:`QuantizationTracer`.

    Raises:
        TraceError: naming the model, the source line that could not be traced,
            and the remedies (``fx_wrap`` or sending the part to CPU with ``hybrid``).
    """
    if isinstance(model, fx.GraphModule):
        return model
    tracer = QuantizationTracer()
    try:
        graph = tracer.trace(model, concrete_args)
    except Exception as exc:
        fr, what = _user_frame(exc, model)
        where = f" at {fr.filename}:{fr.lineno} `{(fr.line or '').strip()}`" if fr else ""
        raise TraceError(
            f"torch.fx cannot trace {what}{where}: {type(exc).__name__}: {exc}. "
            f"Data-dependent Python (if/for on tensor values, len(), .item(), numpy) cannot be traced: move it "
            f"into a function decorated with qframe_core.utils.fx_helper.fx_wrap(), or keep that part out of "
            f"the quantized region (hybrid mode)"
        ) from exc
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    gm.meta[MODEL_CLASS_KEY] = name
    # modules reachable only through fx_wrap-ed methods (prepared as sub-models, see prepare)
    gm.meta["qframe_wrapped_only"] = install_wrapped_methods(gm, model)
    return gm


#: ``GraphModule.meta`` key: the class name of the float model a qframe GraphModule was traced from
MODEL_CLASS_KEY = "qframe_model_class"


def model_class_name(module: nn.Module) -> str:
    """The class name a user knows ``module`` by: for a GraphModule traced by qframe (fuse_fx, prepare_qat_fx,
    convert_fx) the float model's class (``meta["qframe_model_class"]``), which a deep copy keeps while the
    GraphModule's own class name becomes ``GraphModule``; for a TorchScript module its ``original_name``; else
    the class name (``GraphModule`` for a GraphModule without the record)."""
    if isinstance(module, fx.GraphModule):
        recorded = module.meta.get(MODEL_CLASS_KEY)
        if recorded:
            return str(recorded)
    original = getattr(module, "original_name", None)  # torch.jit.ScriptModule
    if isinstance(original, str) and original:
        return original
    return type(module).__name__


def name_class_after_model(gm: fx.GraphModule) -> fx.GraphModule:
    """Give ``gm``'s class the float model's name recorded in its meta (as tracing did), so that printing
    it and ``torch.jit.trace(gm).original_name`` show that name again after a deep copy.  Each GraphModule
    has a class of its own (``GraphModule.__new__``), so no other module is renamed."""
    recorded = gm.meta.get(MODEL_CLASS_KEY)
    if recorded and type(gm) is not fx.GraphModule:
        type(gm).__name__ = str(recorded)
    return gm


def is_torch_stub(m: nn.Module) -> bool:
    return isinstance(m, _TORCH_STUBS)


__all__ = ["MODEL_CLASS_KEY", "QuantizationTracer", "is_torch_stub", "model_class_name", "name_class_after_model",
           "symbolic_trace"]
