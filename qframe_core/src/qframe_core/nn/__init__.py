"""Modules of qframe: fused float modules (``intrinsic``), QAT modules (``qat``) and
integer modules (``quantized``, including ``FloatFunctional``)."""

from . import intrinsic, qat, quantized
from .unary import Unary

__all__ = ["Unary", "intrinsic", "qat", "quantized"]
