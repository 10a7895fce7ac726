"""The seeds' default qconfig constants: names, kinds, dtypes; 16-bit activations end to end on bayes."""

import pytest
import torch
from torch import nn

from qframe_core.dtype import qint8, qint16
from qframe_core.errors import UnsupportedOpError
from qframe_core.quantization import (
    DeQuantStub,
    QuantStub,
    prepare_qat_fx,
)
from qframe_core.quantization import qconfig as qc
from tests.quant_helpers import calibrate_and_convert

CONSTANTS = {
    # name: (kind, activation dtype or None for a high-precision output)
    "default_calib_8bit_fake_quant_qconfig": ("calibration", qint8),
    "default_qat_8bit_fake_quant_qconfig": ("qat", qint8),
    "default_calib_out_8bit_fake_quant_qconfig": ("calibration", None),
    "default_qat_out_8bit_fake_quant_qconfig": ("qat", None),
    "default_calib_8bit_weight_32bit_out_fake_quant_qconfig": ("calibration", None),
    "default_qat_8bit_weight_32bit_out_fake_quant_qconfig": ("qat", None),
    "default_calib_16bit_fake_quant_qconfig": ("calibration", qint16),
    "default_qat_16bit_fake_quant_qconfig": ("qat", qint16),
    "default_qat_8bit_lsq_quant_qconfig": ("qat", qint8),
}


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_constant(name):
    kind, dtype = CONSTANTS[name]
    q = getattr(qc, name)
    assert q.kind == kind
    if dtype is None:
        assert q.activation is None
    else:
        assert q.activation().dtype == dtype
    assert q.weight().dtype == qint8 and q.weight().ch_axis == 0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv, self.relu, self.conv2 = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.dequant(self.conv2(self.relu(self.conv(self.quant(x)))))


def test_16bit_activations_end_to_end_on_bayes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    qat, quantized = calibrate_and_convert(Net(), "bayes", [x], qc.default_calib_16bit_fake_quant_qconfig)
    assert quantized.conv.out_dtype == qint16
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), qat(x), atol=0, rtol=0)
        assert quantized.quant(x).dtype == torch.int16


def test_16bit_activations_refused_on_bernoulli2():
    with pytest.raises(UnsupportedOpError, match=r"output dtype qint16 is not supported on march 'bernoulli2'"):
        prepare_qat_fx(Net(), {"": qc.default_qat_16bit_fake_quant_qconfig}, march="bernoulli2")
