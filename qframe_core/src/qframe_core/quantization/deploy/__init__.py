"""Deployment helpers: check, compile, measure and draw a converted integer model.

The deployment runtime is the march's integer kernel extension: a compiled
artifact is the traced integer model (a TorchScript program calling
``torch.ops.qframe.*``) with a manifest, and it reproduces the converted
model bit for bit.  What a march runs comes from its op table in the registry.
"""

from .check import CheckReport, LayerRow, ModelCheckError, check_model
from .compile import CompileError, compile_model, load_compiled
from .perf import perf_model
from .visualize import visualize_model

__all__ = ["CheckReport", "CompileError", "LayerRow", "ModelCheckError", "check_model", "compile_model",
           "load_compiled", "perf_model", "visualize_model"]
