"""Eager-mode fusion: ``fuse_modules`` and the ``fuse_known_modules`` fuser.

``fuse_known_modules(mod_list)`` fuses a list of modules with the same
:class:`~qframe_core.lowering.FusionPattern` records ``fuse_fx`` uses (the
current march's, or every installed march's when none is set): the first
position receives the fused module, the others become ``Identity``.  It has
torch's fuser signature, so it plugs into ``torch.ao.quantization.fuse_modules``
as the seeds do (``fuser_func=fuse_known_modules``).

An add in the list (``["conv", "bn", "add", "relu"]``, ``add`` a
FloatFunctional whose ``add(conv_out, residual)`` the forward calls) moves the
fused module to the add's position and makes the conv's position an
``Identity``, so ``self.add.add(self.relu(self.bn(self.conv(x))), residual)``
becomes ``fused.add(x, residual)`` (fused, QAT and integer conv/linear modules
answer ``.add``: :class:`~qframe_core.nn.intrinsic.CalledAsAdd`); the conv's output must be the *first*
operand of that add.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence, Union

from torch import nn

from ..errors import MarchNotSetError
from ..lowering import OP_ALIASES, FusionPattern
from ..march import get_march, resolve_march
from ..registry import registry


def _is_float_functional(m: nn.Module) -> bool:
    return type(m).__name__ == "FloatFunctional"  # qframe's, or torch.ao's (the seeds list both)


def _matches(module: nn.Module, matcher: Any) -> bool:
    if isinstance(matcher, type):
        return isinstance(module, matcher)
    if matcher == "add":
        return _is_float_functional(module)
    return isinstance(module, OP_ALIASES[matcher]["modules"])


def _patterns() -> list[FusionPattern]:
    try:
        return registry.fusion_patterns(resolve_march(get_march()).name)
    except MarchNotSetError:
        unique = {p.name: p for m in registry.march_names() for p in registry.fusion_patterns(m)}
        return list(unique.values())


def _pattern_for(mod_list: Sequence[nn.Module]) -> FusionPattern:
    for pattern in _patterns():
        if len(pattern.sequence) == len(mod_list) and all(
                _matches(m, s) for m, s in zip(mod_list, pattern.sequence)):
            return pattern
    names = " -> ".join(type(m).__name__ for m in mod_list)
    raise ValueError(
        f"fuse_known_modules: no fusion pattern of the installed marches matches {names}. Fusable chains are "
        f"conv/linear [-> BatchNorm] [-> add (FloatFunctional)] [-> ReLU|ReLU6] (`qframe list` shows the patterns)")


def fuse_known_modules(mod_list: Sequence[nn.Module], is_qat: bool = False,
                       additional_fuser_method_mapping: Optional[dict] = None) -> list[nn.Module]:
    """Fuse ``mod_list`` (in dataflow order) into one module; return the new list (same length).

    BatchNorm is folded with its running statistics.  ``is_qat`` and
    ``additional_fuser_method_mapping`` are accepted for torch's fuser
    signature; a mapping ``{(type, type, ...): fn(*modules)}`` overrides the
    patterns for those type sequences, as in torch.
    """
    types = tuple(type(m) for m in mod_list)
    if additional_fuser_method_mapping and types in additional_fuser_method_mapping:
        fused = additional_fuser_method_mapping[types](*mod_list)
        return [fused] + [nn.Identity() for _ in mod_list[1:]]
    pattern = _pattern_for(mod_list)
    modules = [m if isinstance(s, type) else None for m, s in zip(mod_list, pattern.sequence)]
    fused = pattern.fuser(modules, pattern.activation, pattern.has_add)
    if getattr(mod_list[0], "preserve_qat_mode", False):
        fused.preserve_qat_mode = True
    out: list[nn.Module] = [nn.Identity() for _ in mod_list]
    if pattern.has_add:  # fused modules answer .add(x, residual) (intrinsic.CalledAsAdd)
        out[pattern.sequence.index("add")] = fused
    else:
        out[0] = fused
    return out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def fuse_modules(model: nn.Module, modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]],
                 inplace: bool = False, fuser_func: Any = fuse_known_modules,
                 fuse_custom_config_dict: Optional[dict] = None) -> nn.Module:
    """Fuse the named chains of ``model`` (eager mode).

    Args:
        model: the float model (in eval mode for BN folding).
        modules_to_fuse: one list of module names (``["0", "1", "2"]``) or a list of them.
        inplace: modify ``model`` instead of a deep copy.
        fuser_func: ``fuser_func(mod_list, is_qat, additional_fuser_method_mapping) -> list``.
        fuse_custom_config_dict: ``{"additional_fuser_method_mapping": {...}}`` as in torch.
    """
    if not inplace:
        model = copy.deepcopy(model)
    groups = [modules_to_fuse] if modules_to_fuse and isinstance(modules_to_fuse[0], str) else modules_to_fuse
    extra = (fuse_custom_config_dict or {}).get("additional_fuser_method_mapping")
    for group in groups:
        try:
            mod_list = [model.get_submodule(name) for name in group]
        except AttributeError as exc:
            raise ValueError(f"fuse_modules: {type(model).__name__} has no module {exc}") from exc
        for name, new in zip(group, fuser_func(mod_list, False, extra)):
            _set_module(model, name, new)
    return model


__all__ = ["fuse_known_modules", "fuse_modules"]
