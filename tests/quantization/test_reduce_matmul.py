"""sum / mean / matmul: exact integer sums and products requantized by the march rule; dims per the tables."""

import pytest
import torch
from torch import nn

from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    get_default_qconfig,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8


class SENet(nn.Module):
    """Squeeze-excitation-like: channel mean, global mean, a matmul and a sum."""

    def __init__(self, dims=(2, 3)):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.dims = dims
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.conv(self.quant(x))
        pooled = x.mean(self.dims, keepdim=True)          # [N, C, 1, 1] on bayes
        chan = torch.mean(x, dim=1, keepdim=True)          # [N, 1, H, W]
        gram = torch.matmul(x, x.transpose(2, 3))          # [N, C, H, H]
        total = torch.sum(x, dim=1, keepdim=True)
        return self.dequant(pooled + chan), self.dequant(gram), self.dequant(total)


def _calibrated(m, model, x, qconfig=Q8):
    with march(m):
        q = prepare_qat_fx(model, {"": qconfig})
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    return q


@pytest.mark.parametrize("qconfig", [Q8, get_default_qconfig(activation_qkwargs={"dtype": "qint16"})],
                         ids=["int8", "int16"])
def test_bayes_integer_model_equals_qat_validation(qconfig):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    q = _calibrated("bayes", SENet(), x, qconfig)
    names = set(dict(q.named_children()))
    assert {"_generated_mean_0", "_generated_mean_1", "_generated_matmul_0", "_generated_sum_0"} <= names
    expected = q(x)
    got = convert_fx(q)(x)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    model = SENet().eval()
    model.load_state_dict({k: v for k, v in q.state_dict().items() if k.startswith("conv.")}, strict=False)


def test_mean_against_a_plain_reference():
    from qframe_core.dtype import qint8
    from qframe_core.march import resolve_march
    from qframe_core.nn.integer_functional import int_reduce, reduce_params
    from qframe_core.quantization.fake_quantize import QuantParams

    q = torch.randint(-128, 128, (2, 3, 4, 5))
    a, out = QuantParams(torch.tensor([0.1]), qint8), QuantParams(torch.tensor([0.02]), qint8)
    got = int_reduce(q, reduce_params(a, out, (2, 3), False, True), resolve_march("bayes").requant, "t")
    want = torch.round(q.double().mean((2, 3)) * 0.1 / 0.02).clamp(-128, 127)
    assert (got.double() - want).abs().max() <= 1  # the multiplier is a 32-bit approximation of 0.1/(20*0.02)
    assert (got.double() == want).float().mean() > 0.95


def test_bernoulli2_limits_reduce_dims():
    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"reduce_dims=\(2, 3\) breaks 只支持在 channel"):
        prepare_qat_fx(SENet(), {"": Q8})
