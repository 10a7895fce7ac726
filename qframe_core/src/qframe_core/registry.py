"""Plugin discovery and typed lookups of everything plugins contribute.

Plugins are found through the ``qframe`` entry-point group and loaded
once, lazily, on the first query: importing :mod:`qframe_core` loads no
plugin.  Each plugin is loaded and registered in isolation, so one that
fails to import or raises in a hook is recorded as broken (see
:meth:`Registry.broken`) and the others still work.

Set ``QFRAME_PLUGINS`` to a comma-separated list of entry-point names to
load exactly those (an empty string loads none); tests use it to be
deterministic.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import threading
import warnings
from typing import Any, Callable, Iterable, Optional

import attrs
import pluggy

from . import hookspecs
from .errors import DuplicateContributionError, NotInstalledError

#: Contribution kinds, in the order ``qframe list`` shows them.
KINDS = ("march", "observer", "fusion_pattern", "lowering", "tool")

_HOOK_OF_KIND = {
    "march": "qframe_register_marches",
    "observer": "qframe_register_observers",
    "fusion_pattern": "qframe_register_fusion_patterns",
    "lowering": "qframe_register_lowerings",
    "tool": "qframe_register_tools",
}


@attrs.frozen
class AnalysisTool:
    """An analysis tool contributed by a plugin.

    Attributes:
        name: the name users look it up by (``registry.tool(name)``).
        function: the callable implementing it.
        description: one line shown by ``qframe list``.
    """

    name: str
    function: Callable[..., Any]
    description: str = ""


@attrs.frozen
class ObserverEntry:
    """An observer class registered under a name."""

    name: str
    cls: type


@attrs.frozen
class Contribution:
    """One thing a plugin registered, with where it came from.

    Attributes:
        kind: one of :data:`KINDS`.
        key: the unique key within its kind (a name, or ``(march, name)``).
        value: the registered record (MarchSpec, ObserverEntry, FusionPattern, OpLowering, AnalysisTool).
        plugin: the entry-point (or in-process plugin) name.
        distribution: the distribution that provides the plugin.
    """

    kind: str
    key: Any
    value: Any
    plugin: str
    distribution: str


@attrs.frozen
class BrokenPlugin:
    """A plugin that failed to import or to register, and why."""

    plugin: str
    distribution: str
    error: str


def _key_of(kind: str, value: Any) -> Iterable[Any]:
    """The registry keys a contribution occupies (a pattern or lowering may serve several marches)."""
    if kind == "march":
        return [value.name]
    if kind in ("observer", "tool"):
        return [value.name]
    if kind == "fusion_pattern":
        return [(m, value.name) for m in value.marches]
    if kind == "lowering":
        return [(value.march, value.op_key)]
    raise AssertionError(kind)


def march_distribution_hint(name: str) -> str:
    """The distribution that, by qframe's naming convention, provides march ``name``."""
    return f"qframe-march-{name}"


class Registry:
    """All contributions of the installed plugins.

    Use the module-level :data:`registry` instance; tests may build their own.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loaded = False
        self._contributions: dict[tuple[str, Any], Contribution] = {}
        self._conflicts: dict[tuple[str, Any], list[Contribution]] = {}
        self._broken: list[BrokenPlugin] = []
        self._extra_plugins: list[tuple[Any, str, str]] = []
        self._pm: Optional[pluggy.PluginManager] = None

    # -- loading -----------------------------------------------------------------
    def _new_plugin_manager(self) -> pluggy.PluginManager:
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        return pm

    def _entry_points(self) -> list[importlib_metadata.EntryPoint]:
        eps = importlib_metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
        wanted = os.environ.get("QFRAME_PLUGINS")
        allowed = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
        seen: set[str] = set()
        out = []
        for ep in eps:
            ident = f"{ep.name}={ep.value}"
            if ident in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(ident)
            if allowed is not None and ep.name not in allowed:
                continue
            out.append(ep)
        return out

    def load(self) -> None:
        """Load every plugin once (called implicitly by every query)."""
        with self._lock:
            if self._loaded:
                return
            self._pm = self._new_plugin_manager()
            for ep in self._entry_points():
                dist = ep.dist.name if ep.dist is not None else "<unknown>"
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken plugin must not break the others
                    self._mark_broken(ep.name, dist, exc, "import")
                    continue
                self._register_plugin(plugin, ep.name, dist)
            for plugin, name, dist in self._extra_plugins:
                self._register_plugin(plugin, name, dist)
            self._loaded = True

    def _mark_broken(self, plugin: str, dist: str, exc: BaseException, stage: str) -> None:
        msg = f"{type(exc).__name__} during {stage}: {exc}"
        self._broken.append(BrokenPlugin(plugin, dist, msg))
        warnings.warn(
            f"qframe plugin {plugin!r} from distribution {dist!r} is broken and was skipped ({msg}); "
            f"`qframe list` shows it. Reinstall or uninstall {dist} to fix.",
            RuntimeWarning,
            stacklevel=3,
        )

    def _register_plugin(self, plugin: Any, name: str, dist: str) -> None:
        assert self._pm is not None
        try:
            self._pm.register(plugin, name=name)
        except Exception as exc:
            self._mark_broken(name, dist, exc, "registration")
            return
        pending: list[Contribution] = []
        try:
            for kind in KINDS:
                hook = getattr(self._pm.hook, _HOOK_OF_KIND[kind])
                for impl in hook.get_hookimpls():
                    if impl.plugin is not plugin:
                        continue
                    impl.function(register=self._collector(kind, name, dist, pending))
        except Exception as exc:
            self._pm.unregister(plugin)
            self._mark_broken(name, dist, exc, "registration")
            return
        seen: set[tuple[str, Any]] = set()
        for c in pending:
            if (c.kind, c.key) in seen:
                self._pm.unregister(plugin)
                self._mark_broken(name, dist, ValueError(
                    f"it registers {c.kind.replace('_', ' ')} {c.key!r} twice"), "registration")
                return
            seen.add((c.kind, c.key))
        for c in pending:
            self._add(c)

    def _collector(self, kind: str, plugin: str, dist: str, pending: list) -> Callable[..., None]:
        from .lowering import FusionPattern, OpLowering
        from .march import MarchSpec

        expected = {"march": MarchSpec, "fusion_pattern": FusionPattern, "lowering": OpLowering,
                    "tool": AnalysisTool}

        def register(*args: Any) -> None:
            if kind == "observer":
                if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], type):
                    raise TypeError(f"plugin {plugin!r}: register(name: str, observer_class) expected, got {args!r}")
                value: Any = ObserverEntry(args[0], args[1])
            else:
                if len(args) != 1 or not isinstance(args[0], expected[kind]):
                    raise TypeError(
                        f"plugin {plugin!r}: {_HOOK_OF_KIND[kind]} must call register() with one "
                        f"{expected[kind].__name__}, got {args!r}"
                    )
                value = args[0]
            for key in _key_of(kind, value):
                pending.append(Contribution(kind, key, value, plugin, dist))

        return register

    def _add(self, c: Contribution) -> None:
        slot = (c.kind, c.key)
        if slot in self._conflicts:
            self._conflicts[slot].append(c)
            return
        if slot in self._contributions:
            first = self._contributions.pop(slot)
            self._conflicts[slot] = [first, c]
            warnings.warn(str(self._duplicate_error(slot)), RuntimeWarning, stacklevel=4)
            return
        self._contributions[slot] = c

    def _duplicate_error(self, slot: tuple[str, Any]) -> DuplicateContributionError:
        kind, key = slot
        who = " and ".join(f"{c.distribution} (plugin {c.plugin!r})" for c in self._conflicts[slot])
        return DuplicateContributionError(
            f"{kind.replace('_', ' ')} {key!r} is registered by more than one plugin: {who}. "
            f"Uninstall one of these distributions."
        )

    def register_plugin(self, plugin: Any, name: str, distribution: str = "<in-process>") -> None:
        """Register an in-process plugin (an object or module with ``@hookimpl`` functions).

        Meant for tests and notebooks; published plugins use the ``qframe`` entry point.
        """
        with self._lock:
            self._extra_plugins.append((plugin, name, distribution))
            if self._loaded:
                self._register_plugin(plugin, name, distribution)

    def reset(self) -> None:
        """Forget everything; the next query loads the plugins again."""
        with self._lock:
            self.__init__()

    # -- queries -----------------------------------------------------------------
    def contributions(self, kind: Optional[str] = None) -> list[Contribution]:
        """Every (non-conflicting) contribution, optionally of one kind, in registration order."""
        self.load()
        return [c for c in self._contributions.values() if kind is None or c.kind == kind]

    def conflicts(self) -> list[list[Contribution]]:
        """Groups of contributions that claimed the same name."""
        self.load()
        return list(self._conflicts.values())

    def broken(self) -> list[BrokenPlugin]:
        """Plugins that failed to import or register."""
        self.load()
        return list(self._broken)

    def _get(self, kind: str, key: Any) -> Optional[Contribution]:
        self.load()
        slot = (kind, key)
        if slot in self._conflicts:
            raise self._duplicate_error(slot)
        return self._contributions.get(slot)

    def march_names(self) -> list[str]:
        return [c.key for c in self.contributions("march")]

    def march(self, name: str):
        """The :class:`~qframe_core.march.MarchSpec` called ``name``.

        Raises:
            NotInstalledError: naming the installed marches and the distribution to install.
        """
        return self._require("march", name, "march", "marches",
                             f"Install it with `pip install {march_distribution_hint(name)}`.").value

    def _require(self, kind: str, name: str, noun: str, plural: str, way_out: str) -> Contribution:
        """The contribution ``name`` of ``kind``, or NotInstalledError listing what is installed."""
        c = self._get(kind, name)
        if c is None:
            installed = ", ".join(str(c.key) for c in self.contributions(kind)) or "none"
            raise NotInstalledError(f"{noun} {name!r} is not installed (installed {plural}: {installed}). {way_out}")
        return c

    def observer(self, name: str) -> type:
        """The observer class registered as ``name``."""
        return self._require("observer", name, "observer", "observers",
                             "The built-in observers come with `pip install qframe-observers`.").value.cls

    def fusion_patterns(self, march: str) -> list:
        """Fusion patterns that apply to ``march``, longest first (so the greediest match wins)."""
        pats = [c.value for c in self.contributions("fusion_pattern") if c.key[0] == march]
        return sorted(pats, key=lambda p: -len(p.sequence))

    def lowerings(self, march: str) -> list:
        """Every :class:`~qframe_core.lowering.OpLowering` of ``march``."""
        return [c.value for c in self.contributions("lowering") if c.key[0] == march]

    def lowering(self, march: str, op_key: Any):
        """The lowering of ``op_key`` on ``march``, or None if the march lists none."""
        c = self._get("lowering", (march, op_key))
        return None if c is None else c.value

    def tool(self, name: str) -> AnalysisTool:
        """The analysis tool registered as ``name``."""
        return self._require("tool", name, "analysis tool", "tools",
                             "The built-in tools come with `pip install qframe-profiler`.").value

    def distribution_of(self, kind: str, key: Any) -> str:
        c = self._get(kind, key)
        return "<not installed>" if c is None else c.distribution


#: The process-wide registry.
registry = Registry()
