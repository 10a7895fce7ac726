"""The contract between qframe's core and its plugins.

A plugin is a module (or object) exposing functions marked ``@hookimpl``
and advertised under the entry-point group ``qframe``::

    [project.entry-points.qframe]
    my_march = "my_package.plugin"

Every hook receives a ``register`` callable and returns nothing.  The core
keeps all bookkeeping on its side (which distribution contributed what,
duplicate names, broken plugins): a plugin only states what it provides.
Hooks are called once per process, lazily, the first time the registry is
queried (see :mod:`qframe_core.registry`).  A hook that raises marks its
plugin as broken; none of that plugin's contributions are kept, and every
other plugin still loads.

This module imports nothing heavy on purpose: it is read by plugin authors.
"""

import pluggy

PROJECT_NAME = "qframe"
ENTRY_POINT_GROUP = "qframe"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def qframe_register_marches(register):
    """Register hardware targets ("marches").

    Call ``register(spec)`` once per march, with a
    :class:`qframe_core.march.MarchSpec` describing the target: its name
    (what users pass to ``set_march``), the activation dtypes it computes,
    its requantization rule (:class:`qframe_core.numerics.RequantRule`) and
    the import path of its compiled integer kernel module.  A march name
    may be registered by one distribution only.
    """


@hookspec
def qframe_register_observers(register):
    """Register calibration observers.

    Call ``register(name, observer_class)`` once per observer.  ``name`` is
    what users pass to ``get_default_qconfig(activation_observer=name)``;
    ``observer_class`` subclasses :class:`qframe_core.quantization.observer.ObserverBase`
    and honours its contract (``forward`` records statistics and returns its
    input unchanged; ``calculate_qparams`` returns ``(scale, zero_point)``).
    Histogram-based observers can build on
    :class:`qframe_core.quantization.histogram.HistogramObserverBase` and only
    implement the threshold search.
    """


@hookspec
def qframe_register_fusion_patterns(register):
    """Register operator fusion patterns.

    Call ``register(pattern)`` with a
    :class:`qframe_core.lowering.FusionPattern`: an operator sequence in
    dataflow order (e.g. Conv2d -> BatchNorm2d -> add -> ReLU), the marches
    it applies to, and the function building the fused float module.
    Patterns are data; build them with the helpers of
    :mod:`qframe_core.lowering` so a new march reuses the common ones.
    """


@hookspec
def qframe_register_lowerings(register):
    """Register op lowerings: what a march can run and how.

    Call ``register(lowering)`` with a :class:`qframe_core.lowering.OpLowering`
    per (march, op): the float op (module class, function or method name),
    the QAT module it becomes at prepare, the quantized module it becomes
    at convert, and the constraints the march puts on it (input/output
    dtypes, limits, or "unsupported" with the reason).  This table is the
    single source of truth for prepare, convert, model checks and the error
    messages users see.
    """


@hookspec
def qframe_register_tools(register):
    """Register analysis tools.

    Call ``register(tool)`` with a :class:`qframe_core.registry.AnalysisTool`:
    a name, the callable, and a one-line description shown by ``qframe list``.
    """
