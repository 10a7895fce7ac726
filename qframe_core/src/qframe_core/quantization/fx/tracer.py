"""Pass 1: trace a float model into a GraphModule.

qframe's modules (stubs, fused, QAT, FloatFunctional) are leaves; when
tracing fails the error names the offending source line and the way out.
"""

from __future__ import annotations

import traceback
from typing import Any, Optional

from torch import fx, nn

from ...errors import TraceError
from .wrapped_methods import install_wrapped_methods

try:  # torch.ao's stubs are accepted as well
    from torch.ao.quantization import DeQuantStub as _TorchDeQuantStub
    from torch.ao.quantization import QuantStub as _TorchQuantStub

    _TORCH_STUBS: tuple = (_TorchQuantStub, _TorchDeQuantStub)
except ImportError:  # pragma: no cover
    _TORCH_STUBS = ()


class QuantizationTracer(fx.Tracer):
    """A tracer that keeps qframe modules (and torch.ao's stubs) as single nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if getattr(type(m), "_qframe_leaf", False) or isinstance(m, _TORCH_STUBS):
            return True
        if hasattr(type(m), "lowering_key"):  # an op of the op tables (qframe_core.nn.Interpolate: nn.Upsample's row)
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(exc: BaseException) -> Optional[traceback.FrameSummary]:
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        path = fr.filename.replace("\\", "/")
        if "/torch/" not in path and "/qframe_core/" not in path:
            return fr
    return None


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
        fr = _user_frame(exc)
        where = f" at {fr.filename}:{fr.lineno} `{(fr.line or '').strip()}`" if fr else ""
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}.forward{where}: {type(exc).__name__}: {exc}. "
            f"Data-dependent Python (if/for on tensor values, len(), .item(), numpy) cannot be traced: move it "
            f"into a function decorated with qframe_core.utils.fx_helper.fx_wrap(), or keep that part out of "
            f"the quantized region (hybrid mode)"
        ) from exc
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    # modules reachable only through fx_wrap-ed methods (prepared as sub-models, see prepare)
    gm.meta["qframe_wrapped_only"] = install_wrapped_methods(gm, model)
    return gm


def is_torch_stub(m: nn.Module) -> bool:
    return isinstance(m, _TORCH_STUBS)


__all__ = ["QuantizationTracer", "is_torch_stub", "symbolic_trace"]
