"""qframe plugin: registers the observers of this distribution."""

from qframe_core.hookspecs import hookimpl


@hookimpl
def qframe_register_observers(register):
    from qframe_core.quantization.fixed_scale import FixedScaleObserver

    from .kl import KLObserver
    from .min_max import MinMaxObserver
    from .mix import MixObserver
    from .mse import MSEObserver
    from .percentile import PercentileObserver

    register("min_max", MinMaxObserver)
    register("percentile", PercentileObserver)
    register("mse", MSEObserver)
    register("kl", KLObserver)
    register("mix", MixObserver)
    register("fixed_scale", FixedScaleObserver)
