"""qframe analysis tools (the seeds' ``quant_profiler``, ``check_model`` and ``horizon_plugin_profiler``)."""

from .check_model import check_qat_model
from .similarity import featuremap_similarity

__all__ = ["check_qat_model", "featuremap_similarity"]
