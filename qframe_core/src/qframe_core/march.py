"""Hardware targets ("marches") and the current-march setting.

The core knows no march by name: :class:`March` resolves its attributes
(``March.BAYES``) against the installed march plugins, and
:func:`set_march` validates against them, so asking for a march that is not
installed fails with the list of what is and the distribution to install.

The current march is one :class:`contextvars.ContextVar` behind
:func:`set_march` (process-wide default) and :func:`march` (scoped)::

    set_march(March.BAYES)
    with march("bernoulli2"):
        ...
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from types import ModuleType
from typing import Any, Iterator, Optional, Union

import attrs

from .dtype import QuantDType
from .errors import MarchNotSetError
from .numerics import RequantRule
from .registry import registry


@attrs.frozen
class MarchSpec:
    """What a march plugin declares about its target.

    Attributes:
        name: the march name users type (``"bayes"``).
        description: one line for ``qframe list``.
        activation_dtypes: dtypes activations may use on this target.
        requant: the requantization rule (multiplier width, rounding).
        kernels: import path of the compiled integer kernel module
            (loaded on first use by :meth:`load_kernels`).
        max_rank: the largest tensor rank the target supports (None = any).
        lookup: how non-linear ops are computed — a
            :class:`~qframe_core.lookup.DirectTable` or
            :class:`~qframe_core.lookup.SegmentTable` (None: the march has none).
        bilinear: the fixed-point format of bilinear resize — a
            :class:`~qframe_core.resize.BilinearFormat` (None: the march has none).
    """

    name: str
    description: str
    activation_dtypes: tuple[QuantDType, ...]
    requant: RequantRule
    kernels: str
    max_rank: Optional[int] = None
    lookup: Optional[Any] = None
    bilinear: Optional[Any] = None

    def load_kernels(self) -> ModuleType:
        """Import and return this march's kernel extension module."""
        try:
            return importlib.import_module(self.kernels)
        except ImportError as exc:
            raise ImportError(
                f"march {self.name!r}: its kernel extension {self.kernels!r} cannot be imported ({exc}); "
                f"reinstall the march distribution so its C++ extension is built"
            ) from exc


class _MarchMeta(type):
    def __getattr__(cls, attr: str) -> str:
        if attr.startswith("_"):
            raise AttributeError(attr)
        name = attr.lower()
        registry.march(name)  # raises NotInstalledError naming what is installed
        return name

    def __dir__(cls) -> list[str]:
        return sorted(set(super().__dir__()) | {n.upper() for n in registry.march_names()})


class March(metaclass=_MarchMeta):
    """Names of the installed marches: ``March.BERNOULLI2 == "bernoulli2"``.

    Attributes are resolved against the installed plugins, so ``March.X``
    exists exactly when a plugin registers march ``"x"``.
    """

    @classmethod
    def installed(cls) -> list[str]:
        return registry.march_names()


_GLOBAL: Optional[str] = None
_SCOPED: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("qframe_march", default=None)

MarchLike = Union[str, MarchSpec]


def _validate(name: MarchLike) -> str:
    if isinstance(name, MarchSpec):
        name = name.name
    if not isinstance(name, str):
        raise TypeError(f"a march is named by a string (e.g. March.BAYES), got {name!r}")
    registry.march(name.lower())
    return name.lower()


def set_march(name: MarchLike) -> None:
    """Set the process-wide march (what ``get_march()`` returns outside ``with march(...)``)."""
    global _GLOBAL
    _GLOBAL = _validate(name)


def get_march() -> str:
    """The current march name.

    Raises:
        MarchNotSetError: when none was set, naming the installed marches.
    """
    current = _SCOPED.get() or _GLOBAL
    if current is None:
        installed = ", ".join(registry.march_names()) or "none installed"
        raise MarchNotSetError(
            f"no march is set: call qframe_core.march.set_march(...) or pass march=... "
            f"(installed marches: {installed})"
        )
    return current


def resolve_march(name: Optional[MarchLike] = None) -> MarchSpec:
    """The :class:`MarchSpec` of ``name``, or of the current march when ``name`` is None."""
    return registry.march(_validate(name) if name is not None else get_march())


@contextlib.contextmanager
def march(name: MarchLike) -> Iterator[str]:
    """Use march ``name`` inside the ``with`` block (nestable, thread- and task-local)."""
    token = _SCOPED.set(_validate(name))
    try:
        yield _SCOPED.get()
    finally:
        _SCOPED.reset(token)
