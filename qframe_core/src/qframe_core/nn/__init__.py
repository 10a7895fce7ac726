"""Modules of qframe: fused float modules (``intrinsic``), QAT modules (``qat``) and
integer modules (``quantized``, including ``FloatFunctional``)."""

from . import intrinsic, qat, quantized

__all__ = ["intrinsic", "qat", "quantized"]
