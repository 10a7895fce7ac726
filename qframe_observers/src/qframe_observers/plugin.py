"""qframe plugin: registers the observers of this distribution."""

from qframe_core.hookspecs import hookimpl


@hookimpl
def qframe_register_observers(register):
    from .min_max import MinMaxObserver

    register("min_max", MinMaxObserver)
