"""Functions users call by the seeds' names (``horizon_plugin_pytorch.functional``)."""

from .color_space import bgr2centered_yuv, centered_yuv2bgr, centered_yuv2rgb, rgb2centered_yuv

__all__ = ["bgr2centered_yuv", "centered_yuv2bgr", "centered_yuv2rgb", "rgb2centered_yuv"]
