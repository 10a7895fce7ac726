"""Tracing details: torch.ao's FloatFunctional fuses like qframe's; trace errors name the submodule."""

import pytest
import torch
import torch.ao.nn.quantized as torch_quantized
from torch import nn

from qframe_core.errors import TraceError
from qframe_core.nn.intrinsic import ConvAddReLU2d
from qframe_core.quantization import (
    DeQuantStub,
    QuantStub,
    fuse_fx,
    prepare_qat_fx,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8
from tests.quant_helpers import calibrate_and_convert


class TorchFFBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()
        self.ff, self.ff_cat = torch_quantized.FloatFunctional(), torch_quantized.FloatFunctional()

    def forward(self, x):
        x = self.quant(x)
        y = self.relu(self.ff.add(self.bn(self.conv(x)), x))
        return self.dequant(self.ff_cat.cat([y, x], dim=1))


def test_torch_ao_float_functional_add_fuses_and_converts_exactly():
    model = TorchFFBlock().eval()
    fused = fuse_fx(model, "bayes")
    assert type(fused.ff) is ConvAddReLU2d and type(fused.conv) is nn.Identity
    x = torch.randn(2, 3, 6, 6)
    qat, quantized = calibrate_and_convert(model, "bayes", [x])
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), qat(x), atol=0, rtol=0)
    # tracing leaves torch's class as it was
    assert torch_quantized.FloatFunctional.add(model.ff, torch.ones(1), torch.ones(1)).item() == 2


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.inner = QuantStub(), DataDependent()

    def forward(self, x):
        return self.inner(self.quant(x))


def test_trace_error_names_the_submodule_and_its_line():
    with pytest.raises(TraceError, match=r"cannot trace 'inner' \(DataDependent\)\.forward at .*test_tracer_details.py"
                                         r":\d+ `if x.sum\(\) > 0:`.*fx_wrap"):
        prepare_qat_fx(Outer(), {"": Q8}, march="bayes")


def test_prepare_leaves_the_callers_model_as_it_was():
    model = TorchFFBlock().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    prepare_qat_fx(model, {"": Q8}, march="bayes")
    assert all(m.training for m in model.modules())  # BN folding must not leave the user's modules in eval mode
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
