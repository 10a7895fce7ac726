"""What every QAT module shares: its march, its input quantization, its state."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ...errors import QuantizationStateError
from ...march import resolve_march
from ...numerics import RequantRule
from ...quantization.fake_quantize import FakeQuantize, FakeQuantState, QuantParams


class QATModule(nn.Module):
    """Mixin of QAT modules.

    prepare binds each QAT module to the modules producing its inputs
    (:meth:`bind_inputs`), so in VALIDATION state it knows the integer
    grid its inputs lie on and can reproduce the march's integer
    arithmetic exactly.  Producers are kept in a plain list, not as
    submodules, so they are neither saved twice nor traversed twice.
    """

    _qframe_leaf = True
    march: str = ""
    qframe_name: str = ""

    def _init_qat(self, march: str) -> None:
        self.march = march
        self.qframe_name = type(self).__name__
        self._input_producers: list[Any] = []

    def bind_inputs(self, producers: list[Any]) -> None:
        self._input_producers = list(producers)

    def input_params(self, index: int) -> QuantParams:
        if index >= len(self._input_producers):
            raise QuantizationStateError(
                f"{self.qframe_name}: input {index} has no known quantization — QAT modules must come from "
                f"prepare_qat_fx/prepare, which binds them to the modules producing their inputs"
            )
        return self._input_producers[index].output_params()

    @property
    def requant_rule(self) -> RequantRule:
        return resolve_march(self.march).requant

    def state(self) -> FakeQuantState:
        for m in self.modules():
            if isinstance(m, FakeQuantize):
                return m.state
        return FakeQuantState.QAT

    def simulating(self) -> bool:
        """True in VALIDATION state: compute with the march's integer arithmetic.

        A module without a fake-quantize of its own (max pooling, comparisons, grid sampling…)
        follows the state of the module producing its first input."""
        if any(isinstance(m, FakeQuantize) for m in self.modules()):
            return self.state() is FakeQuantState.VALIDATION
        producer = self._input_producers[0] if getattr(self, "_input_producers", None) else None
        return producer is not None and hasattr(producer, "simulating") and producer.simulating()

    def set_names(self, name: str) -> None:
        self.qframe_name = name
        for sub_name, m in self.named_modules():
            if isinstance(m, FakeQuantize):
                m.set_name(f"{name}.{sub_name}" if sub_name else name)


def make_fake_quant(factory: Optional[Any], what: str, owner: str) -> Optional[FakeQuantize]:
    if factory is None:
        return None
    fq = factory()
    if not isinstance(fq, FakeQuantize):
        raise TypeError(f"{owner}: the qconfig's {what} factory must build a FakeQuantize, got {type(fq).__name__}")
    return fq


def integer_tensor_to_float(q: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """``q * scale`` in float32, per tensor or per channel — the dequantization rule."""
    s = params.scale.float().to(q.device)
    if params.ch_axis is not None and s.numel() > 1:
        shape = [1] * q.dim()
        shape[params.ch_axis] = -1
        s = s.reshape(shape)
    else:
        s = s.reshape(())
    return q.float() * s


class MultiOutputQAT(QATModule):
    """A QAT module with several outputs on their own grids (LSTMCell's ``(h, c)``, attention's
    ``(out, weights)``): ``output_fake_quants`` names the fake-quantize of each output, in order."""

    output_fake_quants: tuple[str, ...] = ("activation_post_process",)
    output_labels: tuple[str, ...] = ("out",)

    def output_params(self) -> QuantParams:
        return self.output_params_at(0)

    def output_params_at(self, index: int) -> QuantParams:
        return self.output_post_process_at(index).quant_params()

    def output_post_process_at(self, index: int) -> FakeQuantize:
        if not 0 <= index < len(self.output_fake_quants):
            raise IndexError(f"{self.qframe_name}: {type(self).__name__} has {len(self.output_fake_quants)} outputs "
                             f"({', '.join(self.output_labels)}), not {index}")
        return getattr(self, self.output_fake_quants[index])


class OutputView:
    """One output of a module with several (``out[i]`` of an LSTMCell): the producer prepare binds a consumer
    of ``out[i]`` to.  The module provides ``output_params_at(i)`` and ``output_post_process_at(i)``."""

    def __init__(self, module: nn.Module, index: int) -> None:
        self.module = module
        self.index = index

    def output_params(self) -> QuantParams:
        return self.module.output_params_at(self.index)

    @property
    def activation_post_process(self) -> FakeQuantize:
        return self.module.output_post_process_at(self.index)
