"""Modules of qframe: fused float modules (``intrinsic``), QAT modules (``qat``) and
integer modules (``quantized``, including ``FloatFunctional``)."""

from . import intrinsic, qat, quantized, unary
from .anchor_generator import AnchorGenerator
from .grid_sample import GridSample
from .roi_align import MultiScaleRoIAlign, RoIAlign, roi_align
from .unary import NAMED_UNARY, Interpolate, Unary

globals().update({n.capitalize(): getattr(unary, n.capitalize()) for n in NAMED_UNARY})  # Exp, Log, Sqrt, …

__all__ = ["AnchorGenerator", "GridSample", "MultiScaleRoIAlign", "Interpolate", "RoIAlign", "roi_align", "Unary", "intrinsic", "qat", "quantized", *[n.capitalize() for n in NAMED_UNARY]]
