"""dev-guide.zh.md "Calibration 指南": steps 2-6 of 流程和示例 with the recommended observers, the documented
``get_default_qconfig`` signature and ``FakeQuantState``, and the "Observer 参数文档" class signatures.

``import horizon_plugin_pytorch as horizon`` -> ``import qframe_core as horizon``; the observer classes'
path ``horizon_plugin_pytorch.quantization.observer_v2`` -> ``qframe_observers``. The digits-trained
version of steps 2-6 is tests/seed_examples/test_qat_guide_example.py::test_calibration_guide.
"""

import copy
import inspect

import pytest
import torch
from torch import nn

import qframe_core as horizon
import qframe_observers as observer_v2
from qframe_core.quantization import FakeQuantState

#: the seed's documented signatures: class -> leading (name, default) pairs
SEED_OBSERVERS = {
    "KLObserver": [("bins", 512), ("update_interval", 1)],
    "MSEObserver": [("stride", 1)],
    "MinMaxObserver": [],
    "MixObserver": [],
    "PercentileObserver": [("percentile", 99.99), ("bins", 2048)],
}
COMMON = [("averaging_constant", 0.01), ("ch_axis", -1), ("dtype", "qint8"), ("qscheme", torch.per_tensor_symmetric),
          ("quant_min", None), ("quant_max", None), ("is_sync_quantize", False), ("factory_kwargs", None)]


def _leading(cls, n):
    params = list(inspect.signature(cls).parameters.values())[:n]
    return [(p.name, p.default) for p in params]


@pytest.mark.parametrize("name", sorted(SEED_OBSERVERS))
def test_observer_v2_signatures(name):
    cls = getattr(observer_v2, name)
    expected = SEED_OBSERVERS[name] + COMMON
    assert _leading(cls, len(expected)) == expected


def test_moving_average_observer_signatures():
    # horizon_plugin_pytorch.quantization.MovingAverageMinMaxObserver(averaging_constant=0.01, dtype=torch.qint8,
    #   qscheme=torch.per_tensor_symmetric, quant_min=None, quant_max=None, is_sync_quantize=False, factory_kwargs=None)
    ma = horizon.quantization.MovingAverageMinMaxObserver
    assert [n for n, _ in _leading(ma, 7)] == ["averaging_constant", "dtype", "qscheme", "quant_min", "quant_max",
                                                "is_sync_quantize", "factory_kwargs"]
    pc = horizon.quantization.MovingAveragePerChannelMinMaxObserver
    assert _leading(pc, 4) == [("averaging_constant", 0.01), ("ch_axis", 0), ("dtype", "qint8"),
                               ("qscheme", torch.per_channel_symmetric)]


def test_get_default_qconfig_signature_and_fake_quant_state():
    params = inspect.signature(horizon.quantization.get_default_qconfig).parameters
    assert [(p.name, p.default) for p in list(params.values())[:6]] == [
        ("activation_fake_quant", "fake_quant"), ("weight_fake_quant", "fake_quant"),
        ("activation_observer", "min_max"), ("weight_observer", "min_max"),
        ("activation_qkwargs", None), ("weight_qkwargs", None)]
    assert {s.name: s.value for s in FakeQuantState} == {"QAT": "qat", "CALIBRATION": "calibration",
                                                         "VALIDATION": "validation"}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = horizon.quantization.QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.dequant = horizon.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.conv2(self.relu(self.conv(self.quant(x)))))


@pytest.mark.parametrize("activation_observer", ["min_max", "percentile", "mse", "kl", "mix"])
def test_calibration_steps(activation_observer):
    """Steps 2-6 with each calibration observer ("min_max" for weights, as recommended)."""
    torch.manual_seed(0)
    horizon.march.set_march(horizon.march.March.BAYES)
    float_model = Net().eval()
    calib_data = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    x = torch.randn(8, 3, 8, 8)

    # 2. 插入 Observer 节点
    model = copy.deepcopy(float_model)
    model.qconfig = horizon.quantization.get_default_qconfig(activation_observer=activation_observer)
    model = horizon.quantization.prepare_qat_fx(model)
    # 3. 设置 fake quantize 状态为 CALIBRATION
    model.eval()
    horizon.quantization.set_fake_quantize(model, horizon.quantization.FakeQuantState.CALIBRATION)
    # 4. calibration: observe only, the output is the float model's
    with torch.no_grad():
        for batch in calib_data:
            assert torch.equal(model(batch), float_model(batch))
    # 5. eval + VALIDATION
    model.eval()
    horizon.quantization.set_fake_quantize(model, horizon.quantization.FakeQuantState.VALIDATION)
    fq = model.conv.activation_post_process
    assert type(fq.activation_post_process) is horizon.registry.registry.observer(activation_observer)
    scale = fq.scale.clone()
    with torch.no_grad():
        out = model(x)
        model(x * 10)  # validation does not observe
    assert torch.equal(fq.scale, scale)
    # 6. 验证 calibration 效果
    cos = torch.nn.functional.cosine_similarity(out.flatten(), float_model(x).flatten(), dim=0)
    assert cos > 0.99, cos
    assert torch.equal(horizon.quantization.convert_fx(model)(x), out)
