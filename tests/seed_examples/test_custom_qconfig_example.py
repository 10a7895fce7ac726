"""advanced.zh.md "自定义 qconfig": activation/weight FakeQuantize.with_args(...) wrapped in a QConfig.

The seed's three snippets verbatim (imports renamed; the seed shows none: FakeQuantize, QConfig and the
observers come from qframe_core.quantization, the seeds' horizon_plugin_pytorch.quantization), then the
qconfig used on a small model: the observers' arguments take effect and the model converts.
"""

import torch
from torch import nn

from qframe_core.march import March, set_march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantize,
    FakeQuantState,
    MovingAveragePerChannelMinMaxObserver,
    MovingAveragePerTensorMinMaxObserver,
    QConfig,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)

activation_8bit_fake_quant = FakeQuantize.with_args(
                         observer=MovingAveragePerTensorMinMaxObserver,
                         dtype="qint8",
                         ch_axis=0,
                         averaging_constant=0 # 自定义 observer 的参数
)  # fmt: skip

weight_8bit_fake_quant = FakeQuantize.with_args(
                         observer=MovingAveragePerChannelMinMaxObserver,
                         dtype="qint8",
                         ch_axis=0,
                         averaging_constant=1 # 自定义 observer 的参数
)  # fmt: skip

qat_8bit_qconfig = QConfig(
    activation=activation_8bit_fake_quant, weight=weight_8bit_fake_quant
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.relu(self.conv(self.quant(x))))


def test_the_factories_build_what_they_say():
    act = qat_8bit_qconfig.activation()
    assert isinstance(act, FakeQuantize) and isinstance(act.activation_post_process, MovingAveragePerTensorMinMaxObserver)
    assert str(act.dtype) == "qint8" and act.ch_axis is None  # per tensor: one scale whatever ch_axis says
    weight = qat_8bit_qconfig.weight()
    assert isinstance(weight.activation_post_process, MovingAveragePerChannelMinMaxObserver)
    assert weight.ch_axis == 0 and (weight.quant_min, weight.quant_max) == (-128, 127)


def test_the_custom_qconfig_prepares_trains_and_converts():
    torch.manual_seed(0)
    set_march(March.BAYES)
    model = Net()
    model.qconfig = qat_8bit_qconfig
    qat_model = prepare_qat_fx(model)
    act = qat_model.conv.activation_post_process
    assert isinstance(act.activation_post_process, MovingAveragePerTensorMinMaxObserver)
    assert isinstance(qat_model.conv.weight_fake_quant.activation_post_process, MovingAveragePerChannelMinMaxObserver)

    qat_model.train()
    set_fake_quantize(qat_model, FakeQuantState.QAT)
    x = torch.randn(4, 3, 8, 8)
    qat_model(x)
    first = act.scale.clone()
    # averaging_constant=0: the first batch sets the range and later ones do not move it
    qat_model(x * 4)
    assert torch.equal(act.scale, first)
    # averaging_constant=1: the weight scales always follow the current weights
    with torch.no_grad():
        qat_model.conv.weight.mul_(2)
    qat_model(x)
    amax = qat_model.conv.weight.detach().abs().amax(dim=(1, 2, 3))
    torch.testing.assert_close(qat_model.conv.weight_fake_quant.scale, amax / 127.5)

    qat_model.eval()
    set_fake_quantize(qat_model, FakeQuantState.VALIDATION)
    quantized = convert_fx(qat_model)
    assert torch.equal(quantized(x), qat_model(x))
