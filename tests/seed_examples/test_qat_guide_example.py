"""dev-guide.zh.md "量化训练指南" and "Calibration 指南" examples, on the digits data set.

Imports renamed (horizon_plugin_pytorch -> qframe_core); CIFAR replaced by
scikit-learn's digits and the model by the quick start's DigitsNet.
"""

import copy

import pytest
import torch
from torch import nn

import qframe_core as horizon
from qframe_core.march import March, set_march
from qframe_core.quantization import FakeQuantState, convert_fx, get_default_qconfig, prepare_qat_fx, set_fake_quantize
from qframe_core.quickstart import DigitsNet, accuracy, digits_loaders

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train, test = digits_loaders()
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(6):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), train, test


def test_calibration_guide(trained):
    float_model, train, test = trained
    set_march(March.BAYES)
    model = copy.deepcopy(float_model)
    # "model.qconfig = horizon.quantization.get_default_qconfig()"
    model.qconfig = horizon.quantization.get_default_qconfig()
    calib_model = prepare_qat_fx(model)
    calib_model.eval()
    horizon.quantization.set_fake_quantize(calib_model, horizon.quantization.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for x, _ in train:
            calib_model(x)
    calib_model.eval()
    horizon.quantization.set_fake_quantize(calib_model, horizon.quantization.FakeQuantState.VALIDATION)
    assert accuracy(calib_model, test) >= accuracy(float_model, test) - 1.5


def test_qat_guide(trained):
    float_model, train, test = trained
    set_march(March.BAYES)
    calib_model = prepare_qat_fx(copy.deepcopy(float_model), {
        "": get_default_qconfig(), "module_name": {"classifier": get_default_qconfig(activation_fake_quant=None)}})
    set_fake_quantize(calib_model, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for x, _ in train:
            calib_model(x)

    # the guide's own definitions
    default_qat_8bit_fake_quant_qconfig = get_default_qconfig(
        activation_fake_quant="fake_quant",
        weight_fake_quant="fake_quant",
        activation_observer="min_max",
        weight_observer="min_max",
        activation_qkwargs=None,
        weight_qkwargs={
            "qscheme": torch.per_channel_symmetric,
            "ch_axis": 0,
        },
    )
    default_qat_out_8bit_fake_quant_qconfig = get_default_qconfig(
        activation_fake_quant=None,
        weight_fake_quant="fake_quant",
        activation_observer=None,
        weight_observer="min_max",
        activation_qkwargs=None,
        weight_qkwargs={
            "qscheme": torch.per_channel_symmetric,
            "ch_axis": 0,
        },
    )
    qat_model = prepare_qat_fx(
        copy.deepcopy(float_model),
        {
            "": default_qat_8bit_fake_quant_qconfig,
            "module_name": {
                "classifier": default_qat_out_8bit_fake_quant_qconfig,
            },
        },
    )
    # 加载 Calibration 模型中的量化参数
    qat_model.load_state_dict(calib_model.state_dict())
    optimizer = torch.optim.SGD(qat_model.parameters(), lr=0.0001, weight_decay=2e-4)
    for _nepoch in range(1):
        qat_model.train()
        set_fake_quantize(qat_model, FakeQuantState.QAT)
        for x, y in train:
            optimizer.zero_grad()
            nn.CrossEntropyLoss()(qat_model(x), y).backward()
            optimizer.step()
        qat_model.eval()
        set_fake_quantize(qat_model, FakeQuantState.VALIDATION)
        qat_acc = accuracy(qat_model, test)

    quantized_model = convert_fx(qat_model.eval())
    quantized_acc = accuracy(quantized_model, test)
    assert quantized_acc == qat_acc  # QAT in VALIDATION predicts the integer model
    assert quantized_acc >= accuracy(float_model, test) - 1.5
    assert qat_model.classifier.activation_post_process is None  # high-precision output
