"""set_preserve_qat_mode: keep chosen ops in QAT form in the integer model, to find the op that loses accuracy.

Works on a float model (before prepare) or on a QAT model.  A fused module
inherits the setting of its conv (set it on the conv, or name the fused
module — e.g. ``_generated_add_0`` — with ``prefixes``).  On a QAT model,
``types`` may name float classes (matched through the op each QAT module
was prepared from) or QAT classes.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


def set_preserve_qat_mode(model: nn.Module, prefixes: Sequence[str] = (), types: Sequence[type] = (),
                          value: bool = True) -> list[str]:
    """Set ``preserve_qat_mode = value`` on the modules matching ``prefixes`` or ``types``; return their names."""
    float_ops = getattr(model, "meta", {}).get("qframe_float_ops", {})
    types = tuple(types)
    chosen = []
    for name, mod in model.named_modules():
        if not name:
            continue
        by_name = any(name.startswith(p) for p in prefixes)
        key = float_ops.get(name)  # the float op it was prepared from: a class, or "FloatFunctional.add"
        by_type = bool(types) and (
            isinstance(mod, types)
            or (isinstance(key, type) and issubclass(key, types))
            or (isinstance(key, str) and any(t.__name__ == key.split(".")[0] for t in types)))
        if by_name or by_type:
            mod.preserve_qat_mode = value
            chosen.append(name)
    return chosen
