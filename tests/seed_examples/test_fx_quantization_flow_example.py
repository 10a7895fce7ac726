"""advanced.zh.md "FX Quantization 原理介绍 / 量化流程": Fuse (optional) -> Prepare -> Convert.

The seed's snippets with ``import horizon_plugin_pytorch as horizon`` -> ``import qframe_core as horizon``
(including its ``horizon.qconfig.default_calib_8bit_fake_quant_qconfig`` spelling), on a small model and
with ``"<module_name>": custom_qconfig`` made concrete (a high-precision output for the last conv).
"""

import copy

import pytest
import torch
from torch import nn

import qframe_core as horizon


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = horizon.quantization.QuantStub()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.head = nn.Conv2d(8, 2, 1)
        self.dequant = horizon.quantization.DeQuantStub()

    def forward(self, x):
        x = self.relu0(self.bn0(self.conv0(self.quant(x))))
        x = self.relu1(self.bn1(self.conv1(x)) + x)
        return self.dequant(self.head(x))


def _model():
    torch.manual_seed(0)
    model = Model().eval()
    for bn in (model.bn0, model.bn1):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return model


def test_fuse_prepare_convert():
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)

    # ---- Fuse（可选）
    fused_model = horizon.quantization.fuse_fx(model)
    assert isinstance(fused_model, torch.fx.GraphModule) and fused_model is not model  # no inplace
    assert type(fused_model.conv0).__name__ == "ConvReLU2d"
    assert type(fused_model._generated_add_0).__name__ == "ConvAddReLU2d"
    assert all(isinstance(getattr(fused_model, n), nn.Identity) for n in ("bn0", "relu0", "conv1", "bn1", "relu1"))
    torch.testing.assert_close(fused_model(x), ref, atol=1e-5, rtol=1e-5)
    # fused_model 和 model 会共享几乎所有属性
    assert fused_model.head is model.head

    # ---- Prepare
    custom_qconfig = horizon.qconfig.default_calib_8bit_weight_32bit_out_fake_quant_qconfig
    # 设置 march **RDK X3** 设置BERNOULLI2， **RDK Ultra** 设置为BAYES。
    horizon.march.set_march(horizon.march.March.BAYES)
    qat_model = horizon.quantization.prepare_qat_fx(
        _model(),
        {
            "": horizon.qconfig.default_calib_8bit_fake_quant_qconfig,
            "module_name": {
                "head": custom_qconfig,
            },
        },)
    # 将模型中符合条件的算子替换为 horizon.nn.qat 中的实现
    for name in ("quant", "conv0", "_generated_add_0", "head"):
        assert type(getattr(qat_model, name)).__module__.startswith("qframe_core.nn.qat"), name
    assert qat_model.head.activation_post_process is None  # the custom (high-precision output) qconfig
    assert qat_model.conv0.activation_post_process is not None
    # prepare_qat_fx fuses again, so a fused model prepares to the same structure
    refused = horizon.quantization.prepare_qat_fx(
        horizon.quantization.fuse_fx(_model()),
        {"": horizon.qconfig.default_calib_8bit_fake_quant_qconfig, "module_name": {"head": custom_qconfig}})
    def structure(gm):
        return [(n, type(m)) for n, m in gm.named_modules() if n]

    assert structure(refused) == structure(qat_model)
    assert refused.code == qat_model.code

    qat_model.eval()
    horizon.quantization.set_fake_quantize(qat_model, horizon.quantization.FakeQuantState.CALIBRATION)
    qat_model(x)
    horizon.quantization.set_fake_quantize(qat_model, horizon.quantization.FakeQuantState.VALIDATION)

    # ---- Convert
    quantized_model = horizon.quantization.convert_fx(qat_model)
    assert quantized_model is not qat_model
    assert torch.equal(quantized_model(x), qat_model(x))
    assert torch.nn.functional.cosine_similarity(quantized_model(x).flatten(), ref.flatten(), dim=0) > 0.99


def test_calibration_and_qat_qconfigs_cannot_be_mixed():
    """"Calibtaion 或 QAT，注意两种 qconfig 不能混用"."""
    horizon.march.set_march(horizon.march.March.BAYES)
    with pytest.raises(ValueError, match="mixes calibration and QAT qconfigs"):
        horizon.quantization.prepare_qat_fx(copy.deepcopy(_model()), {
            "": horizon.qconfig.default_calib_8bit_fake_quant_qconfig,
            "module_name": {"head": horizon.qconfig.default_qat_8bit_weight_32bit_out_fake_quant_qconfig}})
