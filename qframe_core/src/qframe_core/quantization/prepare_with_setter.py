"""``prepare(model, example_inputs, qconfig_setter)``: the newer one-call flow of the seeds.

Trace and fuse for the march, let the setter choose the qconfigs, prepare,
and — when example inputs are given and an installed plugin provides the
``check_qat_model`` analysis tool (qframe-profiler does) — run the model
check and print its findings.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

from torch import fx, nn

from ..errors import NotInstalledError
from ..march import MarchLike, resolve_march
from ..registry import registry
from .fx import fuse_fx, prepare_qat_fx
from .qconfig_template import default_qat_qconfig_setter


def prepare(
    model: nn.Module,
    example_inputs: Any = None,
    qconfig_setter: Optional[Callable[[fx.GraphModule, str], dict]] = None,
    march: Optional[MarchLike] = None,
    check: bool = True,
) -> fx.GraphModule:
    """Prepare ``model`` for calibration/QAT with qconfigs chosen by ``qconfig_setter``.

    Args:
        model: float model with QuantStub/DeQuantStub.
        example_inputs: a tensor or tuple of tensors; used to run ``check_qat_model``.
        qconfig_setter: ``(fused_graph_module, march) -> qconfig_dict``; default
            :data:`~qframe_core.quantization.qconfig_template.default_qat_qconfig_setter`.
        march: overrides the current march.
        check: run ``check_qat_model`` when example inputs are given.
    """
    spec = resolve_march(march)
    setter = qconfig_setter or default_qat_qconfig_setter
    fused = fuse_fx(model, march=spec.name)
    qat = prepare_qat_fx(fused, setter(fused, spec.name), march=spec.name)
    if example_inputs is not None and check:
        try:
            tool = registry.tool("check_qat_model")
        except NotInstalledError:
            warnings.warn("prepare: the check_qat_model tool is not installed (pip install qframe-profiler); "
                          "the model was not checked", RuntimeWarning, stacklevel=2)
        else:
            tool.function(qat, example_inputs)
    return qat
