"""prepare(model, example_inputs, qconfig_setter) and check_qat_model."""

import pytest
import torch
from torch import nn

from qframe_core.errors import QframeError
from qframe_core.march import march
from qframe_core.nn.quantized import FloatFunctional
from qframe_core.quantization import DeQuantStub, FakeQuantState, QuantStub, prepare, set_fake_quantize
from qframe_core.quantization.qconfig_template import default_calibration_qconfig_setter
from qframe_profiler import check_qat_model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(3, 2, 1)
        self.unused = nn.Conv2d(3, 3, 1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        y = self.conv(x)
        z = self.relu(y)  # conv's output is used twice: conv+relu cannot fuse
        return self.dequant(self.head(z + y))


def test_prepare_with_the_default_setter_gives_the_output_conv_high_precision(capsys):
    data = torch.rand(2, 3, 8, 8)
    with march("bayes"):
        qat = prepare(Net(), data)
    assert qat.head.activation_post_process is None  # int32 output: it feeds only the DeQuantStub
    assert qat.conv.activation_post_process.dtype.name == "qint8"
    out = capsys.readouterr().out  # prepare ran the check
    assert "conv -> relu" in out and "conv2d_relu" in out
    assert "Each layer out qconfig" in out and "high precision" in out


def test_calibration_setter_and_a_full_cycle():
    data = torch.rand(2, 3, 8, 8)
    with march("bernoulli2"):
        calib = prepare(Net(), data, default_calibration_qconfig_setter, check=False)
    set_fake_quantize(calib, FakeQuantState.CALIBRATION)
    calib(data)
    set_fake_quantize(calib, FakeQuantState.VALIDATION)
    assert calib(data).shape == (2, 2, 8, 8)


def test_check_reports_counts_tables_hints_and_saves(tmp_path):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.conv = nn.Conv2d(3, 3, 1)
            self.ff = FloatFunctional()
            self.dequant = DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            return self.dequant(self.conv(self.ff.add(x, x)))

    data = torch.rand(1, 3, 4, 4)
    from qframe_core.quantization import prepare_qat_fx
    from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig

    with march("bayes"):
        qat = prepare_qat_fx(Shared(), {"": default_qat_8bit_fake_quant_qconfig})
    before = qat.quant.activation_post_process.activation_post_process.max_val.clone()
    r = check_qat_model(qat, data, save_results=True, out_dir=str(tmp_path), print_results=False)
    assert r.call_counts["conv"] == 1 and r.call_counts["quant"] == 1 and r.call_counts["ff"] == 1
    assert ("conv", "Conv2d", "qint8", 0, "MinMaxObserver") in r.weight_qconfigs
    assert any("conv: its output goes straight to a DeQuantStub" in h for h in r.hints)
    text = (tmp_path / "model_check_result.txt").read_text()
    assert "Weight qconfig" in text and "Please check these settings" in text
    # the caller's observers were not moved by the check
    assert torch.equal(qat.quant.activation_post_process.activation_post_process.max_val, before)


def test_check_rejects_a_float_model():
    with pytest.raises(QframeError, match="expects the GraphModule returned by prepare"):
        check_qat_model(Net(), torch.rand(1, 3, 4, 4))


def test_input_dtype_follows_scale_preserving_ops():
    """A DeQuantStub after an op without its own fake-quantize (nearest interpolate) receives that op's
    input dtype (qint8), not a high-precision value."""

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.conv = nn.Conv2d(3, 3, 1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            x = torch.nn.functional.interpolate(self.conv(self.quant(x)), scale_factor=2, mode="nearest")
            return self.dequant(x)

    data = torch.rand(1, 3, 4, 4)
    with march("bayes"):
        qat = prepare(Up(), data, check=False)
    rows = {r[0]: r for r in check_qat_model(qat, data, print_results=False).out_qconfigs}
    assert rows["_generated_interpolate_0"][2:4] == ("qint8", "qint8")
    assert rows["dequant"][2:4] == ("qint8", "torch.float32")
