"""PReLU on bayes: exact per-channel slopes (negative slopes too), integer model == QAT validation."""

import numpy as np
import pytest
import torch
from torch import nn

from qframe_core.dtype import qint8
from qframe_core.march import march, resolve_march
from qframe_core.nn.integer_prelu import int_prelu, prelu_params
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.fake_quantize import QuantParams
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 1)
        self.prelu_c = nn.PReLU(4)
        self.prelu_1 = nn.PReLU()
        self.dequant = DeQuantStub()
        with torch.no_grad():
            self.prelu_c.weight.copy_(torch.tensor([0.1, -0.3, 0.7, 0.0]))

    def forward(self, x):
        return self.dequant(self.prelu_1(self.prelu_c(self.conv(self.quant(x)))))


def test_prelu_integer_model_equals_qat_validation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    with march("bayes"):
        q = prepare_qat_fx(Net(), {"": Q8})
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    expected = q(x)
    assert torch.equal(convert_fx(q)(x), expected)
    assert torch.nn.functional.cosine_similarity(expected.flatten(), Net().eval()(x).flatten(), dim=0) > 0


@pytest.mark.parametrize("alpha", [[0.25], [0.1, -0.3, 0.7]])
def test_prelu_against_a_float_reference(alpha):
    q = torch.randint(-128, 128, (2, len(alpha), 4, 4))
    inp, out = QuantParams(torch.tensor([0.05]), qint8), QuantParams(torch.tensor([0.037]), qint8)
    a = torch.tensor(alpha)
    p = prelu_params(resolve_march("bayes").requant, a, inp, out, "t")
    got = int_prelu(q, p, resolve_march("bayes").requant).numpy()
    x = q.numpy() * 0.05
    slope = np.array(alpha).reshape(1, -1, 1, 1)
    want = np.clip(np.round(np.where(x >= 0, x, x * slope) / 0.037), -128, 127)
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.9  # 1 LSB only at near-ties


def test_prelu_is_not_on_bernoulli2():
    from qframe_core.errors import UnsupportedOpError

    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"torch.nn.PReLU"):
        prepare_qat_fx(Net(), {"": Q8})
