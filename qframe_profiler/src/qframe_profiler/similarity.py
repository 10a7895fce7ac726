"""featuremap_similarity: where do two versions of a model start to disagree?

Runs both models on the same input, records the output of every module
present (by qualified name) in both, dequantizes integer outputs of
quantized modules, and reports per-layer cosine similarity, max absolute
difference and the difference in units of the layer's output scale (LSB).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import attrs
import torch
from tabulate import tabulate
from torch import nn


@attrs.frozen
class LayerSimilarity:
    """How one layer's outputs compare (``b`` relative to ``a``)."""

    name: str
    module_type: str
    cosine: float
    max_abs_diff: float
    max_lsb_diff: Optional[float]
    mismatch_ratio: Optional[float]


def _as_float(module: nn.Module, out: Any) -> Optional[torch.Tensor]:
    if not isinstance(out, torch.Tensor):
        return None
    if out.is_floating_point():
        return out.detach().float()
    params = getattr(module, "output_params", None)
    if params is None:
        return None
    from qframe_core.nn.qat.base import integer_tensor_to_float

    return integer_tensor_to_float(out.detach(), params())


def _record(model: nn.Module, inputs: Sequence[Any]) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    seen: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if not name or any(True for _ in mod.children()) and not getattr(type(mod), "_qframe_leaf", False):
            continue

        def hook(m: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            value = _as_float(m, out)
            if value is not None:
                seen[name] = (m, value)

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _lsb(module: nn.Module, like: torch.Tensor) -> Optional[torch.Tensor]:
    """The output scale of ``module`` broadcastable against its output (per tensor or per channel)."""
    params = getattr(module, "output_params", None)
    if params is None:
        return None
    try:
        p = params()
    except Exception:  # not calibrated, or not a quantized module: no LSB to report
        return None
    s = p.scale.float()
    if p.ch_axis is not None and s.numel() > 1:
        shape = [1] * like.dim()
        shape[p.ch_axis] = -1
        return s.reshape(shape)
    return s.reshape(())


def featuremap_similarity(model_a: nn.Module, model_b: nn.Module, inputs: Sequence[Any],
                          print_table: bool = True) -> list[LayerSimilarity]:
    """Compare the module outputs of two models on ``inputs`` (a tuple of positional args).

    Returns one :class:`LayerSimilarity` per module name found in both, in
    execution order of ``model_a``.  ``max_lsb_diff`` is the largest
    difference in units of ``model_b``'s output scale (per channel where the
    output is per channel), when that scale is known; ``mismatch_ratio`` is
    the share of elements that differ at all.
    """
    rec_a, rec_b = _record(model_a, inputs), _record(model_b, inputs)
    rows: list[LayerSimilarity] = []
    for name, (_, a) in rec_a.items():
        if name not in rec_b or rec_b[name][1].shape != a.shape:
            continue
        mod_b, b = rec_b[name]
        cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item() \
            if a.numel() else 1.0
        diff = (a - b).abs()
        scale = _lsb(mod_b, diff)
        lsb = (diff / scale).max().item() if scale is not None and diff.numel() else None
        mism = (diff > 0).float().mean().item() if diff.numel() else None
        rows.append(LayerSimilarity(name, type(mod_b).__name__, cos, diff.max().item() if diff.numel() else 0.0,
                                    lsb, mism))
    if print_table:
        print(tabulate([attrs.astuple(r) for r in rows],
                       headers=["layer", "type", "cosine", "max |diff|", "max diff (LSB)", "mismatch ratio"],
                       floatfmt=".6g"))
    return rows
