"""qframe plugin: registers the observers of this distribution."""

from qframe_core.hookspecs import hookimpl


@hookimpl
def qframe_register_observers(register):
    from qframe_core.quantization.fixed_scale import FixedScaleObserver

    from .kl import KLObserver
    from .min_max import MinMaxObserver
    from .mix import MixObserver
    from .moving_average import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        MovingAveragePerTensorMinMaxObserver,
    )
    from .mse import MSEObserver
    from .percentile import PercentileObserver

    register("min_max", MinMaxObserver)
    register("percentile", PercentileObserver)
    register("mse", MSEObserver)
    register("kl", KLObserver)
    register("mix", MixObserver)
    register("fixed_scale", FixedScaleObserver)
    # torch.ao-style names, also reachable as qframe_core.quantization.MovingAverage…Observer (the seeds' path)
    register("moving_average_min_max", MovingAverageMinMaxObserver)
    register("moving_average_per_channel_min_max", MovingAveragePerChannelMinMaxObserver)
    register("moving_average_per_tensor_min_max", MovingAveragePerTensorMinMaxObserver)  # the seeds' other name
