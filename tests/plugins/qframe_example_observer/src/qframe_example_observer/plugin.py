"""qframe plugin entry point of the example distribution."""

from qframe_core.hookspecs import hookimpl


@hookimpl
def qframe_register_observers(register):
    from . import MeanAbsObserver

    register("mean_abs", MeanAbsObserver)
