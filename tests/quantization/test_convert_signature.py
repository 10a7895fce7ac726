"""convert_fx takes the seeds' arguments: convert_fx(graph_module, convert_custom_config_dict=None,
_remove_qconfig=True) — a dict in second place is the custom config (never mistaken for ``inplace``)."""

import pytest
import torch
from torch import nn

from qframe_core.march import march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_calib_8bit_fake_quant_qconfig


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 3, 1)
        self.identity = nn.Identity()  # a passthrough: the same module after convert
        self.dequant = DeQuantStub()
        self.preserved_attr = "kept"

    def forward(self, x):
        return self.dequant(self.identity(self.conv(self.quant(x))))


def _calibrated():
    with march("bayes"):
        qat = prepare_qat_fx(Net(), {"": default_calib_8bit_fake_quant_qconfig},
                             {"preserved_attributes": ["preserved_attr"]})
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    qat(torch.rand(1, 3, 4, 4))
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    return qat


def test_preserved_attributes_reach_the_converted_model():
    qat = _calibrated()
    assert qat.preserved_attr == "kept"
    assert not hasattr(convert_fx(qat), "preserved_attr")  # deep copies of GraphModules drop custom attributes
    quantized = convert_fx(qat, {"preserved_attributes": ["preserved_attr"]})
    assert quantized is not qat and quantized.preserved_attr == "kept"
    assert qat.meta["qframe_stage"] == "qat"  # a dict in second place did not mean inplace


def test_remove_qconfig():
    qat = _calibrated()
    qat.identity.qconfig = default_calib_8bit_fake_quant_qconfig  # a leftover user attribute
    assert not hasattr(convert_fx(qat).identity, "qconfig")
    assert convert_fx(qat, _remove_qconfig=False).identity.qconfig == default_calib_8bit_fake_quant_qconfig


def test_bad_custom_config():
    qat = _calibrated()
    with pytest.raises(TypeError, match="inplace=True by keyword"):
        convert_fx(qat, True)
    with pytest.raises(ValueError, match="unknown keys \\['preserved_attribute'\\]"):
        convert_fx(qat, {"preserved_attribute": ["preserved_attr"]})
    with pytest.raises(AttributeError, match="\\['nope'\\] are not attributes"):
        convert_fx(qat, {"preserved_attributes": ["nope"]})
