"""convert_fx: integer models equal the QAT model in VALIDATION state, on both marches and dtypes."""

import copy

import pytest
import torch
from torch import nn

from qframe_core.errors import QframeError, QuantizationStateError
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
from qframe_core.quantization.qconfig import default_qat_8bit_weight_32bit_out_fake_quant_qconfig as Q32

Q16 = get_default_qconfig(activation_qkwargs={"dtype": "qint16"})


class ConvZoo(nn.Module):
    """stride, dilation, groups (depthwise), ReLU6, residual add, a float tail after the DeQuantStub."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(8, 5, 1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.act(self.bn(self.stem(x)))
        y = self.pw(self.dw(x))
        x = self.relu(x + y)
        return self.dequant(self.head(x)).mean((2, 3))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.fc1 = nn.Linear(12, 16)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


def _calibrated(model, qconfig_dict, x, m):
    with march(m):
        q = prepare_qat_fx(copy.deepcopy(model).eval(), qconfig_dict)
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    return q


CASES = [
    ("bernoulli2", ConvZoo, {"": Q8}, (4, 3, 11, 9)),
    ("bayes", ConvZoo, {"": Q8}, (4, 3, 11, 9)),
    ("bayes", ConvZoo, {"": Q16}, (4, 3, 11, 9)),
    ("bayes", ConvZoo, {"": Q16, "module_name": {"head": Q32}}, (2, 3, 7, 7)),
    ("bayes", MLP, {"": Q8, "module_name": {"fc2": Q32}}, (6, 12)),
    ("bayes", MLP, {"": Q8}, (3, 5, 12)),
]


@pytest.mark.parametrize("m,cls,qconfig_dict,shape", CASES,
                         ids=["b2-conv", "bayes-conv", "bayes-int16", "bayes-int16-int32out", "bayes-mlp-int32out",
                              "bayes-mlp-3d"])
def test_quantized_equals_qat_validation(m, cls, qconfig_dict, shape):
    torch.manual_seed(1)
    model = cls()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2)
    x = torch.randn(*shape) * 2
    q = _calibrated(model, qconfig_dict, x, m)
    expected = q(x)
    converted = convert_fx(q)
    got = converted(x)
    assert torch.equal(got, expected), (got - expected).abs().max()
    # the integer model stays close to float
    assert torch.nn.functional.cosine_similarity(got.flatten(), model.eval()(x).flatten(), dim=0) > 0.99
    # convert copies: the QAT model is untouched and still runs
    assert torch.equal(q(x), expected)


def test_int16_activations_are_int16_tensors():
    x = torch.randn(2, 3, 8, 8)
    q = convert_fx(_calibrated(ConvZoo(), {"": Q16}, x, "bayes"))
    seen = {}

    def hook(mod, inputs, output):
        seen["dtype"] = (inputs[0].dtype, output.dtype)

    h = q.stem.register_forward_hook(hook)
    q(x)
    h.remove()
    assert seen["dtype"] == (torch.int16, torch.int16)


def test_convert_needs_a_prepared_model():
    with pytest.raises(QframeError, match="expects the GraphModule returned by prepare_qat_fx"):
        convert_fx(MLP())
    x = torch.randn(2, 12)
    q = convert_fx(_calibrated(MLP(), {"": Q8}, x, "bayes"))
    with pytest.raises(QframeError, match="already converted"):
        convert_fx(q)


def test_convert_of_an_uncalibrated_model_names_the_module():
    with march("bayes"):
        q = prepare_qat_fx(MLP(), {"": Q8})
    with pytest.raises(QuantizationStateError, match=r"quant.activation_post_process: no scale"):
        convert_fx(q)


def test_integer_model_rejects_float_tensors_between_ops():
    x = torch.randn(2, 12)
    q = convert_fx(_calibrated(MLP(), {"": Q8}, x, "bayes"))
    with pytest.raises(TypeError, match=r"fc1: input is a float tensor"):
        q.fc1(torch.randn(2, 12))
