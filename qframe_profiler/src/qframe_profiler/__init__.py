"""qframe analysis tools (the seeds' ``quant_profiler``, ``check_model`` and ``horizon_plugin_profiler``)."""

from .check_model import check_qat_model
from .preserve_qat_mode import set_preserve_qat_mode
from .similarity import featuremap_similarity

__all__ = ["check_qat_model", "featuremap_similarity", "set_preserve_qat_mode"]
