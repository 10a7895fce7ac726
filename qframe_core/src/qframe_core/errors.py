"""Exceptions raised by qframe.

Every message names the thing at fault (module, op, plugin), the rule it
broke and the way out.
"""


class QframeError(Exception):
    """Base class of qframe's errors."""


class NotInstalledError(QframeError, LookupError):
    """A march, observer or tool was asked for but no installed plugin provides it."""


class DuplicateContributionError(QframeError):
    """Two plugins registered the same name for the same kind of contribution."""


class MarchNotSetError(QframeError):
    """An operation needs a march but none was given or set."""


class UnsupportedOpError(QframeError):
    """The current march cannot run an op (or not with these parameters/dtypes)."""


class TraceError(QframeError):
    """torch.fx could not trace the model."""


class QuantizationStateError(QframeError):
    """A fake-quantize or observer is used in a state it cannot serve (e.g. never calibrated)."""


class SharedModuleWarning(UserWarning):
    """A module (or FloatFunctional) is called more than once in forward: a shared op."""
