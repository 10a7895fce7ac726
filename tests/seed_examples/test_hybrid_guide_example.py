"""dev-guide.zh.md "异构模型指南 / 流程和示例": the seed's hybrid model, calibration and QAT models prepared
with ``hybrid=True`` and its ``hybrid_dict``, ``load_observer_params``, ``export_to_onnx(qat_model, data,
"qat.onnx", operator_export_type=None)`` (written under pytest's ``tmp_path``) and ``convert_fx``; the printed
QAT model is compared with the seed's printout, and the exported file with what the seed says of it (standard
ONNX, the CPU ops as float ops).

Imports renamed (horizon_plugin_pytorch -> qframe_core). Deviations, each for a stated reason:

* the seed sets ``March.BAYES``, but its printout keeps ``prelu`` on the CPU, which is what a march without
  PReLU does; qframe's bayes runs PReLU (the seeds' op table allows it), so the printout is reproduced on
  BERNOULLI2, whose table has no PReLU (tests/quantization/test_hybrid.py covers bayes);
* qframe runs the functional ``selu`` calls through generated ``Unary`` modules (``selu_1 =
  self.conv1._generated_selu_0(...)`` where the seed prints ``torch.nn.functional.selu(...)``), and names
  the inserted DeQuantStub's node like its module (``prelu_input_dequant``, the seed: ``prelu_input_dequant_0``);
  the generated module of the top-level ``selu`` is one more child (``_generated_selu_0``).
"""

import copy
import re

import numpy as np  # noqa: F401  (the seed imports it)
import onnx
import torch
from torch import nn
from torch.quantization import DeQuantStub, QuantStub

from qframe_core.march import March, set_march
from qframe_core.nn import qat  # noqa: F401  (the seed imports it)
from qframe_core.quantization import (
    FakeQuantize,
    FakeQuantState,
    convert_fx,
    load_observer_params,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import (
    default_calib_8bit_fake_quant_qconfig,
    default_calib_out_8bit_fake_quant_qconfig,
    default_qat_8bit_fake_quant_qconfig,
    default_qat_out_8bit_fake_quant_qconfig,
)
from qframe_core.utils.onnx_helper import export_to_onnx

#: the forward of the seed's printed QAT model
SEED_FORWARD = """
    input_1 = input
    quant = self.quant(input_1);  input_1 = None
    conv0 = self.conv0(quant);  quant = None
    identity = self.identity(conv0);  conv0 = None
    prelu_input_dequant_0 = self.prelu_input_dequant(identity);  identity = None
    prelu = self.prelu(prelu_input_dequant_0);  prelu_input_dequant_0 = None
    selu = torch.nn.functional.selu(prelu, inplace = False);  prelu = None
    conv1_conv = self.conv1.conv(selu);  selu = None
    conv1_prelu = self.conv1.prelu(conv1_conv);  conv1_conv = None
    selu_1 = torch.nn.functional.selu(conv1_prelu, inplace = False);  conv1_prelu = None
    selu_1_activation_post_process = self.selu_1_activation_post_process(selu_1);  selu_1 = None
    conv2 = self.conv2(selu_1_activation_post_process);  selu_1_activation_post_process = None
    conv3_input_dequant_0 = self.conv3_input_dequant(conv2);  conv2 = None
    conv3 = self.conv3(conv3_input_dequant_0);  conv3_input_dequant_0 = None
    conv3_activation_post_process = self.conv3_activation_post_process(conv3);  conv3 = None
    identity_1 = self.identity(conv3_activation_post_process);  conv3_activation_post_process = None
    conv4 = self.conv4(identity_1);  identity_1 = None
    selu_2_input_dequant_0 = self.selu_2_input_dequant(conv4);  conv4 = None
    selu_2 = torch.nn.functional.selu(selu_2_input_dequant_0, inplace = False);  selu_2_input_dequant_0 = None
    dequant = self.dequant(selu_2);  selu_2 = None
    return dequant
"""

#: the children of the seed's printed QAT model
SEED_CHILDREN = ["quant", "conv0", "prelu", "conv1", "conv2", "conv3", "conv4", "selu", "dequant", "identity",
                 "prelu_input_dequant", "selu_1_activation_post_process", "conv3_activation_post_process",
                 "conv3_input_dequant", "selu_2_input_dequant"]


class _ConvBlock(nn.Module):
    def __init__(self, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.prelu = torch.nn.PReLU()

    def forward(self, input):
        x = self.conv(input)
        x = self.prelu(x)
        return torch.nn.functional.selu(x)


# 封装 functional selu 为 module，便于单独设置
class _SeluModule(nn.Module):
    def forward(self, input):
        return torch.nn.functional.selu(input)


class HybridModel(nn.Module):
    def __init__(self, channels=3):
        super().__init__()
        # 插入 QuantStub
        self.quant = QuantStub()
        self.conv0 = nn.Conv2d(channels, channels, 1)
        self.prelu = torch.nn.PReLU()
        self.conv1 = _ConvBlock(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.conv4 = nn.Conv2d(channels, channels, 1)
        self.selu = _SeluModule()
        # 插入 DequantStub
        self.dequant = DeQuantStub()
        self.identity = torch.nn.Identity()

    def forward(self, input):
        x = self.quant(input)
        x = self.conv0(x)
        x = self.identity(x)
        x = self.prelu(x)
        x = torch.nn.functional.selu(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.identity(x)
        x = self.conv4(x)
        x = self.selu(x)
        return self.dequant(x)


def _seed_example(onnx_file=None):
    """The seed's script; its ``export_to_onnx`` writes ``onnx_file`` (the seed: "qat.onnx") when one is given."""
    torch.manual_seed(0)
    set_march(March.BERNOULLI2)  # the seed: March.BAYES (see the module docstring)
    data_shape = [1, 3, 224, 224]
    data = torch.rand(size=data_shape)
    model = HybridModel()
    qat_model = copy.deepcopy(model)
    # float 模型的推理不要放在 prepare_qat_fx 之后，prepare_qat_fx 会对 float 模型做 inplace 修改
    float_res = model(data)

    calibration_model = prepare_qat_fx(
        model,
        {
            "": default_calib_8bit_fake_quant_qconfig,
            # selu 为 cpu 算子，conv4 实际上是 bpu 模型的输出，设置为高精度输出
            "module_name": [("conv4", default_calib_out_8bit_fake_quant_qconfig)]
        },
        hybrid=True,
        hybrid_dict={
            "module_name": ["conv1.conv", "conv3"],
            "module_type": [_SeluModule],
        },
    )
    # calibration 阶段需确保原有模型不会发生变化
    calibration_model.eval()
    set_fake_quantize(calibration_model, FakeQuantState.CALIBRATION)

    for i in range(5):  # noqa: B007
        calibration_model(torch.rand(size=data_shape))

    qat_model = prepare_qat_fx(
        qat_model,
        {
            "": default_qat_8bit_fake_quant_qconfig,
            # selu 为 cpu 算子，conv4 实际上是 bpu 模型的输出，设置为高精度输出
            "module_name": [("conv4", default_qat_out_8bit_fake_quant_qconfig)]
        },
        hybrid=True,
        hybrid_dict={
            "module_name": ["conv1.conv", "conv3"],
            "module_type": [_SeluModule],
        },
    )

    load_observer_params(calibration_model, qat_model)
    set_fake_quantize(calibration_model, FakeQuantState.QAT)

    # qat training start
    # ......
    # qat training end

    if onnx_file is not None:
        # 导出 qat.onnx
        export_to_onnx(
            qat_model,
            data,
            onnx_file,
            operator_export_type=None,
        )

    # 评测定点模型
    quantize_model = convert_fx(qat_model)
    quantize_res = quantize_model(data)
    return data, float_res, calibration_model, qat_model, quantize_model, quantize_res


def _calls(text):
    """(node name, what it calls) per line of a printed forward; the seed's ``_0`` on dequant nodes dropped."""
    rows = []
    for line in text.strip().splitlines():
        m = re.match(r"\s*(\w+) = (self\.[\w.]+|torch\.nn\.functional\.selu)\(", line)
        if m:
            rows.append((re.sub(r"_input_dequant_0$", "_input_dequant", m.group(1)), m.group(2)))
    return rows


def test_printed_qat_model_matches_the_seed():
    data, float_res, calib, qat_model, quantized, quantize_res = _seed_example()
    text = str(qat_model)

    # the seed's children, plus the generated module of the top-level functional selu
    assert {n for n, _ in qat_model.named_children()} == {*SEED_CHILDREN, "_generated_selu_0"}
    # the forward, line by line: same nodes in the same order calling the same modules; qframe's selu
    # calls go through generated Unary modules where the seed calls the function
    selu_modules = {"self._generated_selu_0", "self.conv1._generated_selu_0", "self.selu._generated_selu_0"}
    ours = [(name, "torch.nn.functional.selu" if call in selu_modules else call)
            for name, call in _calls(qat_model.code)]
    assert ours == _calls(SEED_FORWARD), qat_model.code
    for name in selu_modules:
        unary = qat_model.get_submodule(name[len("self."):])
        assert type(unary).__name__ == "Unary" and "selu" in repr(unary)

    # CPU ops stay float torch modules, as printed: (prelu): PReLU, conv1's conv/prelu, (conv3): Conv2d
    for name in ("prelu", "conv1.prelu"):
        assert type(qat_model.get_submodule(name)) is nn.PReLU
    for name in ("conv1.conv", "conv3"):
        assert type(qat_model.get_submodule(name)) is nn.Conv2d
    assert "(conv3): Conv2d(3, 3, kernel_size=(1, 1), stride=(1, 1))" in text
    assert "(prelu): PReLU(num_parameters=1)" in text
    # BPU convs: per-channel qint8 weights, per-tensor qint8 outputs; conv4 a high-precision output
    for name in ("conv0", "conv2", "conv4"):
        conv = qat_model.get_submodule(name)
        assert type(conv).__module__.startswith("qframe_core.nn.qat")
        wfq = conv.weight_fake_quant
        assert (wfq.quant_min, wfq.quant_max, str(wfq.dtype), wfq.ch_axis) == (-128, 127, "qint8", 0)
        assert wfq.scale.shape == (3,)
    for name in ("quant", "conv0", "conv2"):
        fq = qat_model.get_submodule(name).activation_post_process
        assert isinstance(fq, FakeQuantize) and str(fq.dtype) == "qint8" and fq.ch_axis is None
    assert qat_model.conv4.activation_post_process is None  # (activation_post_process): None
    # the inserted quantizing boundaries carry a fake-quantize with the CPU op's (global) qconfig
    for name in ("selu_1_activation_post_process", "conv3_activation_post_process"):
        fq = qat_model.get_submodule(name).activation_post_process
        assert isinstance(fq, FakeQuantize) and str(fq.dtype) == "qint8"
    for name in ("prelu_input_dequant", "conv3_input_dequant", "selu_2_input_dequant"):
        assert type(qat_model.get_submodule(name)).__name__ == "DeQuantStub"

    # load_observer_params brought the calibrated scales: the QuantStub's is the seed's 0.0078 (data in [0, 1))
    assert round(qat_model.quant.activation_post_process.scale.item(), 4) == 0.0078
    for name, m in calib.named_modules():
        if isinstance(m, FakeQuantize):
            assert torch.equal(qat_model.get_submodule(name).scale, m.scale), name


def test_hybrid_integer_model_evaluates_the_qat_model():
    data, float_res, calib, qat_model, quantized, quantize_res = _seed_example()
    assert quantize_res.shape == float_res.shape == (1, 3, 224, 224)
    assert type(quantized.conv3) is nn.Conv2d and type(quantized.prelu) is nn.PReLU  # CPU ops stay float
    qat_model.eval()
    set_fake_quantize(qat_model, FakeQuantState.VALIDATION)
    assert torch.equal(quantize_res, qat_model(data))
    cos = torch.nn.functional.cosine_similarity(quantize_res.flatten(), float_res.flatten(), dim=0)
    assert cos > 0.99


def test_the_qat_model_exports_standard_onnx(tmp_path):
    """The seed's step 8: ``export_to_onnx(..., operator_export_type=None)`` writes standard ONNX (what
    ``hb_mapper`` takes): every fake-quantize a QuantizeLinear/DequantizeLinear pair, the CPU ops (prelu,
    conv1's conv and prelu, conv3, the selus) plain float ops; the export leaves the seed's later steps as
    they were."""
    f = tmp_path / "qat.onnx"
    data, float_res, calib, qat_model, quantized, quantize_res = _seed_example(onnx_file=f)
    proto = onnx.load(f)
    onnx.checker.check_model(proto)
    assert not [n for n in proto.graph.node if n.domain]  # no custom domain: standard ONNX only
    ops = [n.op_type for n in proto.graph.node]
    n_fq = sum(isinstance(m, FakeQuantize) for m in qat_model.modules())
    assert n_fq == 8  # quant, conv0 (weight, output), conv2 (weight, output), conv4's weight, the two boundaries
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == n_fq
    assert ops.count("Conv") == 5 and ops.count("PRelu") == 2 and ops.count("Selu") == 3
    producers = {o: n for n in proto.graph.node for o in n.output}
    initializers = {t.name for t in proto.graph.initializer}

    def made_by(name):
        return producers[name].op_type if name in producers else "initializer" if name in initializers else name

    convs = {n.name: [made_by(i) for i in n.input[:2]] for n in proto.graph.node if n.op_type == "Conv"}
    # BPU convs (conv0, conv2, conv4): fake-quantized input and weight
    for name in ("/conv0/Conv", "/conv2/Conv", "/conv4/Conv"):
        assert convs[name] == ["DequantizeLinear", "DequantizeLinear"], convs
    # CPU convs: float weights; conv1.conv follows the float selu, conv3 reads conv2's fake-quantized output
    # (the seed's step 9: hb_mapper would quantize conv3 unless told run_on_cpu)
    cpu_convs = {k: v for k, v in convs.items() if k not in ("/conv0/Conv", "/conv2/Conv", "/conv4/Conv")}
    assert sorted(cpu_convs.values()) == [["DequantizeLinear", "initializer"], ["Selu", "initializer"]], convs
    # the first prelu reads the dequantized BPU output; the last selu (_SeluModule) reads conv4's float output
    # (a high-precision output: no fake-quantize after it)
    prelus = [made_by(n.input[0]) for n in proto.graph.node if n.op_type == "PRelu"]
    selus = [made_by(n.input[0]) for n in proto.graph.node if n.op_type == "Selu"]
    assert prelus == ["DequantizeLinear", "Conv"] and selus == ["PRelu", "PRelu", "Conv"]
    # exporting works on a copy: convert_fx after it gives what it gives without the export
    assert torch.equal(quantize_res, _seed_example()[-1])


def test_the_documented_interfaces():
    """"主要接口参数说明": prepare_qat_fx(model, qconfig_dict, prepare_custom_config_dict, optimize_graph, hybrid,
    hybrid_dict) and convert_fx(graph_module, convert_custom_config_dict, _remove_qconfig)."""
    import inspect

    prepare = [(p.name, p.default) for p in inspect.signature(prepare_qat_fx).parameters.values()][1:6]
    assert prepare == [("qconfig_dict", None), ("prepare_custom_config_dict", None), ("optimize_graph", False),
                       ("hybrid", False), ("hybrid_dict", None)]
    convert = [(p.name, p.default) for p in inspect.signature(convert_fx).parameters.values()][1:3]
    assert convert == [("convert_custom_config_dict", None), ("_remove_qconfig", True)]
