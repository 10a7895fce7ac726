"""qconfig setters: decide a model's qconfig_dict from its fused graph (the seeds' ``qconfig_setter``).

``prepare(model, example_inputs, qconfig_setter)`` traces and fuses the model,
asks the setter for the qconfig_dict, then prepares.  The default setters give
every op 8-bit activations and per-channel 8-bit weights, and a high-precision
(int32) output to every conv/linear whose result goes straight to a
DeQuantStub — the seeds' advice for model outputs.
"""

from __future__ import annotations

from typing import Optional

from torch import fx

from ..dtype import qint32
from ..lowering import LoweringKind
from ..registry import registry
from .fx.graph_utils import module_of, op_key
from .qconfig import (
    QConfig,
    default_calib_8bit_fake_quant_qconfig,
    default_calib_8bit_weight_32bit_out_fake_quant_qconfig,
    default_qat_8bit_fake_quant_qconfig,
    default_qat_8bit_weight_32bit_out_fake_quant_qconfig,
)


def _feeds_only_dequant(gm: fx.GraphModule, node: fx.Node, march: str) -> bool:
    """True when every use of ``node`` (through passthrough ops) is a DeQuantStub."""
    from .fx.prepare import is_dequant_stub

    users = list(node.users)
    if not users:
        return False
    for user in users:
        mod = module_of(gm, user)
        if mod is not None and is_dequant_stub(mod):
            continue
        lowering = registry.lowering(march, op_key(gm, user))
        if lowering is not None and lowering.kind is LoweringKind.PASSTHROUGH and _feeds_only_dequant(gm, user, march):
            continue
        return False
    return True


class QconfigSetter:
    """Callable ``(fused_graph_module, march) -> qconfig_dict``.

    Args:
        default: the qconfig of every op.
        output: the qconfig of a conv/linear feeding only DeQuantStubs, when the
            march allows it a qint32 output (None: keep ``default``).
        name: shown in reprs and check reports.
    """

    def __init__(self, default: QConfig, output: Optional[QConfig], name: str) -> None:
        self.default = default
        self.output = output
        self.name = name

    def __call__(self, gm: fx.GraphModule, march: str) -> dict:
        module_names: dict[str, QConfig] = {}
        if self.output is not None:
            for node in gm.graph.nodes:
                if node.op != "call_module":
                    continue
                lowering = registry.lowering(march, op_key(gm, node))
                if lowering is None or qint32 not in lowering.output_dtypes or lowering.qat_module is None:
                    continue
                if not hasattr(gm.get_submodule(node.target), "weight") and not hasattr(
                        getattr(gm.get_submodule(node.target), "inner", None), "weight"):
                    continue
                if _feeds_only_dequant(gm, node, march):
                    module_names[str(node.target)] = self.output
        return {"": self.default, "module_name": module_names}

    def __repr__(self) -> str:
        return self.name


default_qat_qconfig_setter = QconfigSetter(default_qat_8bit_fake_quant_qconfig,
                                           default_qat_8bit_weight_32bit_out_fake_quant_qconfig,
                                           "default_qat_qconfig_setter")
default_calibration_qconfig_setter = QconfigSetter(default_calib_8bit_fake_quant_qconfig,
                                                   default_calib_8bit_weight_32bit_out_fake_quant_qconfig,
                                                   "default_calibration_qconfig_setter")
