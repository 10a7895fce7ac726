"""Linear + BN1d + add + ReLU: fused, simulated in VALIDATION state and converted exactly (LinearAdd)."""

import numpy as np
import pytest
import torch
from torch import nn

from qframe_core.nn.quantized.weighted_exact import LinearAdd
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8
from tests.kernels.reference import MARCH_RULES, finish


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.fc1, self.fc2, self.bn, self.relu = nn.Linear(8, 8), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()

    def forward(self, x):
        x = self.fc1(self.quant(x))
        return self.dequant(self.relu(self.bn(self.fc2(x)) + x))


def test_linear_add_relu_exact_on_bayes():
    torch.manual_seed(0)
    model = Residual().eval()
    model.bn.running_mean.uniform_(-0.3, 0.3)
    model.bn.running_var.uniform_(0.5, 2)
    qat = prepare_qat_fx(model, {"": Q8}, march="bayes")
    assert type(qat._generated_add_0).__name__ == "Linear" and qat._generated_add_0.has_add
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        qat(torch.randn(16, 8))
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    quantized = convert_fx(qat)
    integer = quantized._generated_add_0
    assert type(integer) is LinearAdd
    x = torch.randn(16, 8)
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), qat(x), atol=0, rtol=0)
        q = torch.randint(-128, 128, (5, 8), dtype=torch.int8)
        r = torch.randint(-128, 128, (5, 8), dtype=torch.int8)
        out = integer(q, r)
    acc = q.numpy().astype(np.int64) @ integer.weight.numpy().astype(np.int64).T
    ref = finish(acc, integer.bias.numpy(), integer.multiplier.numpy(), integer.shift.numpy(), "int8",
                 integer.clamp_min, integer.clamp_max, MARCH_RULES["bayes"][1], 1, r.numpy(),
                 integer.residual_multiplier.numpy())
    np.testing.assert_array_equal(out.numpy(), ref)
    with pytest.raises(ValueError, match="residual"):
        integer(q)


@pytest.mark.parametrize("march", ["bernoulli2", "bayes"])
def test_linear_add_kernel_path_on_random_shapes(march):
    """The 1x1-conv kernel path of LinearAdd against the numpy reference: int8/int16 inputs, 3-D inputs, a
    broadcast residual, int8/int16 outputs, ReLU6-style clamps, K not a multiple of 4."""
    from qframe_core.dtype import qint8, qint16
    from qframe_core.nn.qat.weighted import WeightedIntParams
    from qframe_core.quantization.fake_quantize import QuantParams

    rng = np.random.default_rng(3)
    mbits = MARCH_RULES[march][0]
    for in_dt, out_dt, x_shape, r_shape, k, n, clamp in (
            (np.int8, "int8", (7, 13), (7, 5), 13, 5, (None, None)),
            (np.int16, "int16", (2, 3, 64), (2, 3, 40), 64, 40, (0, None)),
            (np.int8, "int8", (4, 2, 9), (1, 2, 33), 9, 33, (0, 70)),
            (np.int16, "int8", (1, 300), (1, 16), 300, 16, (None, None))):
        w = torch.from_numpy(rng.integers(-128, 128, (n, k)))
        p = WeightedIntParams(QuantParams(torch.tensor([0.1]), qint8), w, torch.from_numpy(rng.integers(-9000, 9000, n)),
                              QuantParams(torch.tensor([0.1]), qint16 if out_dt == "int16" else qint8),
                              torch.from_numpy(rng.integers(1, 2 ** (mbits - 1), n)),
                              torch.from_numpy(rng.integers(16, 30, n)), QuantParams(torch.tensor([0.1]), qint8),
                              torch.from_numpy(rng.integers(1, 2 ** (mbits - 1), n)), *clamp)
        mod = LinearAdd(p, march, "fc")
        info = np.iinfo(in_dt)
        x = torch.from_numpy(rng.integers(info.min, info.max, x_shape, endpoint=True).astype(in_dt))
        r = torch.from_numpy(rng.integers(-128, 128, r_shape).astype(np.int8))
        with torch.no_grad():
            out = mod(x, r)
        acc = x.numpy().astype(np.int64) @ mod.weight.numpy().astype(np.int64).T
        rb = np.broadcast_to(r.numpy(), acc.shape)
        want = finish(acc, mod.bias.numpy(), mod.multiplier.numpy(), mod.shift.numpy(), out_dt, *clamp,
                      MARCH_RULES[march][1], -1, rb, mod.residual_multiplier.numpy())
        assert out.shape == acc.shape
        np.testing.assert_array_equal(out.numpy(), want)
