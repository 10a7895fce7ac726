"""Calibration observers for qframe (the seeds' ``observer_v2``)."""

from .min_max import MinMaxObserver

__all__ = ["MinMaxObserver"]
