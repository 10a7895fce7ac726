"""Which QConfig applies to which module.

Priority, lowest to highest: the global ``""`` entry < a ``.qconfig`` set
on an ancestor < ``module_type`` < ``module_name`` (longest matching
prefix) < the module's own ``.qconfig``.  ``module_type`` and
``module_name`` may be dicts or lists of pairs (both appear in the seeds).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..qconfig import QConfig

_UNSET = object()


def _pairs(entry: Any, what: str) -> list[tuple[Any, Any]]:
    if entry is None:
        return []
    if isinstance(entry, dict):
        return list(entry.items())
    if isinstance(entry, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in entry):
        return [tuple(p) for p in entry]
    raise TypeError(f"qconfig_dict[{what!r}] must be a dict or a list of (key, qconfig) pairs, got {entry!r}")


class QConfigResolver:
    """Answers ``qconfig_for(name, module)`` for a model and a ``qconfig_dict``."""

    def __init__(self, root: nn.Module, qconfig_dict: Optional[dict]) -> None:
        qconfig_dict = dict(qconfig_dict or {})
        unknown = set(qconfig_dict) - {"", "module_type", "module_name"}
        if unknown:
            raise ValueError(f"qconfig_dict has unknown keys {sorted(unknown)}: use '', 'module_type' and 'module_name'")
        self.global_qconfig = qconfig_dict.get("", None)
        self.by_type = _pairs(qconfig_dict.get("module_type"), "module_type")
        self.by_name = sorted(_pairs(qconfig_dict.get("module_name"), "module_name"), key=lambda p: -len(p[0]))
        self.own = {name: m.qconfig for name, m in root.named_modules() if "qconfig" in m.__dict__}
        for value in [self.global_qconfig, *[q for _, q in self.by_type], *[q for _, q in self.by_name],
                      *self.own.values()]:
            if value is not None and not isinstance(value, QConfig):
                raise TypeError(f"expected a qframe_core QConfig (or None), got {value!r}")

    def qconfig_for(self, name: str, module: Optional[nn.Module]) -> Optional[QConfig]:
        if name in self.own:
            return self.own[name]
        for prefix, q in self.by_name:
            if name == prefix or name.startswith(prefix + "."):
                return q
        if module is not None:
            for t, q in self.by_type:
                if isinstance(t, type) and type(module) is t:
                    return q
        parts = name.split(".")
        for i in range(len(parts) - 1, -1, -1):
            ancestor = ".".join(parts[:i])
            if ancestor in self.own:
                return self.own[ancestor]
        return self.global_qconfig

    def scoped(self, prefix: str) -> _ScopedResolver:
        """The resolver for the submodule at ``prefix``, taking names relative to it."""
        return _ScopedResolver(self, prefix)

    def all_qconfigs(self) -> list[QConfig]:
        values = [self.global_qconfig, *[q for _, q in self.by_type], *[q for _, q in self.by_name], *self.own.values()]
        return [v for v in values if v is not None]

    def check_kinds(self) -> None:
        """Calibration and QAT qconfigs cannot share a model."""
        kinds = {q.kind for q in self.all_qconfigs() if q.kind is not None}
        if len(kinds) > 1:
            raise ValueError(
                "qconfig_dict mixes calibration and QAT qconfigs (e.g. default_calib_8bit_fake_quant_qconfig with "
                "default_qat_8bit_fake_quant_qconfig): prepare one model for calibration with calib qconfigs, then a "
                "QAT model with QAT qconfigs, and load the calibrated parameters into it"
            )


class _ScopedResolver:
    """A :class:`QConfigResolver` seen from a submodule (``qconfig_for("conv")`` means ``<prefix>.conv``)."""

    def __init__(self, parent: QConfigResolver | _ScopedResolver, prefix: str) -> None:
        self.parent = parent
        self.prefix = prefix

    def qconfig_for(self, name: str, module: Optional[nn.Module]) -> Optional[QConfig]:
        return self.parent.qconfig_for(f"{self.prefix}.{name}" if name else self.prefix, module)

    def scoped(self, prefix: str) -> _ScopedResolver:
        return _ScopedResolver(self, prefix)
