"""dev-guide.zh.md "浮点模型的要求": the float model must pass ``symbolic_trace`` ("symbolic_trace"), and only
the ops of the march's op table (plus qframe's own special ops) can be quantized ("仅支持部分算子").

The section has no code; these are its two rules on a small model, with the errors qframe gives when a
model breaks them.
"""

import pytest
import torch
from torch import nn

from qframe_core.errors import TraceError, UnsupportedOpError
from qframe_core.march import March, set_march
from qframe_core.quantization import DeQuantStub, QuantStub, prepare_qat_fx
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig


class Net(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 3, 1)
        self.body = body
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.body(self.conv(self.quant(x))))


class Traceable(nn.Module):
    def forward(self, x):
        return torch.relu(x) + x


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: symbolic_trace cannot follow it
            return x * 2
        return x


class Erf(nn.Module):
    def forward(self, x):
        return torch.erf(x)


def test_a_model_that_symbolic_trace_accepts_prepares():
    torch.fx.symbolic_trace(Net(Traceable()))
    set_march(March.BAYES)
    qat = prepare_qat_fx(Net(Traceable()), {"": default_qat_8bit_fake_quant_qconfig})
    assert qat(torch.randn(1, 3, 4, 4)).shape == (1, 3, 4, 4)


def test_a_model_that_symbolic_trace_refuses_is_a_trace_error_naming_the_line():
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(Net(DataDependent()))
    set_march(March.BAYES)
    with pytest.raises(TraceError, match=r"(?s)test_float_model_requirements_example.py:\d+ `if x.sum\(\) > 0.*fx_wrap"):
        prepare_qat_fx(Net(DataDependent()), {"": default_qat_8bit_fake_quant_qconfig})


def test_only_the_marchs_ops_are_quantized():
    set_march(March.BERNOULLI2)
    with pytest.raises(UnsupportedOpError, match=r"(?s)'body._generated_erf_0' \(torch.erf\).*bernoulli2.*Way out"):
        prepare_qat_fx(Net(Erf()), {"": default_qat_8bit_fake_quant_qconfig})
