"""qframe plugin: registers the analysis tools of this distribution."""

from qframe_core.hookspecs import hookimpl


@hookimpl
def qframe_register_tools(register):
    from qframe_core.registry import AnalysisTool

    from .similarity import featuremap_similarity

    register(AnalysisTool("featuremap_similarity", featuremap_similarity,
                          "layer-by-layer similarity of two models (float/QAT/quantized) on the same input"))
