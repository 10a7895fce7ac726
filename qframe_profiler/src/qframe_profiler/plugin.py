"""qframe plugin: registers the analysis tools of this distribution."""

from qframe_core.hookspecs import hookimpl


@hookimpl
def qframe_register_tools(register):
    from qframe_core.registry import AnalysisTool

    from .check_model import check_qat_model
    from .preserve_qat_mode import set_preserve_qat_mode
    from .similarity import featuremap_similarity

    register(AnalysisTool("featuremap_similarity", featuremap_similarity,
                          "layer-by-layer similarity of two models (float/QAT/quantized) on the same input"))
    register(AnalysisTool("check_qat_model", check_qat_model,
                          "unfused patterns, shared/unused modules, per-layer and weight qconfigs of a QAT model"))
    register(AnalysisTool("set_preserve_qat_mode", set_preserve_qat_mode,
                          "keep chosen ops in QAT form in the integer model (single-op conversion debugging)"))
