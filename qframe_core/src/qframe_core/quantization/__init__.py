"""Quantization workflow: qconfigs, fake quantization, stubs, fx prepare/convert."""

from .deploy import check_model, compile_model, load_compiled, perf_model, visualize_model
from .eager import convert, prepare_qat
from .fake_quantize import FakeQuantize, FakeQuantState, load_observer_params, set_fake_quantize
from .fuse_modules import fuse_known_modules, fuse_modules
from .fx import convert_fx, fuse_fx, prepare_qat_fx
from .observer import ObserverBase
from .prepare_with_setter import prepare
from .qconfig import (
    QConfig,
    get_default_calib_out_qconfig,
    get_default_calib_qconfig,
    get_default_qat_out_qconfig,
    get_default_qat_qconfig,
    get_default_qconfig,
)
from .stubs import DeQuantStub, QuantStub

__all__ = [
    "DeQuantStub", "FakeQuantState", "FakeQuantize", "ObserverBase", "QConfig", "QuantStub", "check_model",
    "compile_model", "convert", "convert_fx", "fuse_fx", "fuse_known_modules", "fuse_modules",
    "get_default_calib_out_qconfig", "get_default_calib_qconfig",
    "get_default_qat_out_qconfig", "get_default_qat_qconfig", "get_default_qconfig", "load_observer_params",
    "load_compiled", "perf_model", "prepare", "prepare_qat", "prepare_qat_fx", "set_fake_quantize",
    "visualize_model",
]


def __getattr__(name: str):
    """Observer classes by the seeds' import path (``qframe_core.quantization.MovingAverageMinMaxObserver``).

    They are plugin contributions: resolved through the registry on first use, so the core names none.
    """
    if name[:1].isupper():
        from ..registry import registry

        for contribution in registry.contributions("observer"):
            if contribution.value.cls.__name__ == name:
                return contribution.value.cls
    raise AttributeError(f"module 'qframe_core.quantization' has no attribute {name!r}")
