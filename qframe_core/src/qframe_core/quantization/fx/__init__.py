"""The fx-mode pipeline: trace, fuse, prepare, convert."""

from .convert import convert_fx
from .fuse import fuse_fx
from .prepare import prepare_qat_fx
from .tracer import QuantizationTracer, symbolic_trace

__all__ = ["QuantizationTracer", "convert_fx", "fuse_fx", "prepare_qat_fx", "symbolic_trace"]
