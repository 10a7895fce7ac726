"""clamp/clip/relu6 with constant bounds and maximum/minimum: integer model == QAT validation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8


class Bounds(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 3, 1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        a, b = self.a(x), self.b(x)
        y = torch.maximum(torch.clamp(a, -0.5, 0.7), b.clip(min=0.1))
        z = torch.minimum(F.relu6(a * 4 - 0.5), 2 * b)  # scalar mul/sub become mul_scalar/add_scalar
        return self.dequant(y), self.dequant(z)


def test_bayes_bounds_and_extrema_are_exact():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 5, 5)
    with march("bayes"):
        q = prepare_qat_fx(Bounds(), {"": Q8})
    names = set(dict(q.named_children()))
    assert {"_generated_clamp_0", "_generated_clip_0", "_generated_relu6_0", "_generated_maximum_0",
            "_generated_minimum_0", "_generated_mul_scalar_0", "_generated_mul_scalar_1",
            "_generated_add_scalar_0"} <= names
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    expected = q(x)
    got = convert_fx(q)(x)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    # maximum(…, clip(b, min=0.1)) is never below 0.1 (up to one output step of the grid)
    assert expected[0].min() >= 0.1 - 0.02
    assert expected[1].max() <= 6.0


def test_bernoulli2_has_no_clamp():
    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"torch.clamp.*bernoulli2"):
        prepare_qat_fx(Bounds(), {"": Q8})
