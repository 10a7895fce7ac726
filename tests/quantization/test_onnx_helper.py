"""ONNX export (qframe_core.utils.onnx_helper): float, QAT (custom and standard fake-quant nodes), converted
models on both marches, a hybrid model with standard ops, the caller's model left unchanged, bad input."""

import copy
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from qframe_core.nn.quantized import FloatFunctional
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantize,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import (
    default_qat_8bit_fake_quant_qconfig,
    default_qat_8bit_lsq_quant_qconfig,
    default_qat_16bit_fake_quant_qconfig,
    default_qat_out_8bit_fake_quant_qconfig,
)
from qframe_core.utils.onnx_helper import export_quantized_onnx, export_to_onnx, register_onnx_ops
from tests.quant_helpers import calibrate_and_convert
from tests.seed_examples.test_hybrid_guide_example import HybridModel, _SeluModule  # the guide's model


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch: "legacy TorchScript-based ONNX export"
        yield


class ConvNet(nn.Module):
    """conv+bn+relu, a second conv, a residual add, a sigmoid (lookup) and a linear (after the DeQuantStub with
    ``float_linear``: bernoulli2 has no integer Linear)."""

    def __init__(self, float_linear=False):
        super().__init__()
        self.float_linear = float_linear
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.add = FloatFunctional()
        self.sigmoid = nn.Sigmoid()
        self.linear = nn.Linear(4, 5)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        y = self.relu(self.bn(self.conv(x)))
        z = self.sigmoid(self.conv2(y))
        x = self.add.add(y, z)
        if self.float_linear:
            return self.linear(self.dequant(x))
        return self.dequant(self.linear(x))


def _net(float_linear=False):
    torch.manual_seed(0)
    m = ConvNet(float_linear)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _data():
    return torch.randn(1, 3, 6, 4, generator=torch.Generator().manual_seed(1))


def _export(fn, model, args, **kwargs):
    buf = io.BytesIO()
    fn(model, args, buf, **kwargs)
    return onnx.load_from_string(buf.getvalue())


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _nodes(proto, op_type, domain="qframe"):
    return [n for n in proto.graph.node if n.op_type == op_type and n.domain == domain]


def _initializers(proto):
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def _snapshot(model):
    """Everything an export could change: parameters, buffers (scales, observer statistics), modes, states."""
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [(m.state, m.scale.clone()) for m in model.modules() if isinstance(m, FakeQuantize)])


def _assert_unchanged(before, after):
    sd0, modes0, fq0 = before
    sd1, modes1, fq1 = after
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    assert modes0 == modes1
    assert len(fq0) == len(fq1)
    for (s0, c0), (s1, c1) in zip(fq0, fq1):
        assert s0 is s1 and torch.equal(c0, c1)


def _qat(model, qconfig_dict=None, steps=3):
    qat = prepare_qat_fx(model, qconfig_dict or {"": default_qat_8bit_fake_quant_qconfig}, march="bayes")
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for i in range(steps):
            qat(torch.randn(1, 3, 6, 4, generator=torch.Generator().manual_seed(10 + i)))
    set_fake_quantize(qat, FakeQuantState.QAT)
    return qat.train()


def test_float_model_exports_standard_onnx():
    model = _net()
    data = _data()
    before, out0 = _snapshot(model), model(data)
    proto = _export(export_to_onnx, model, data)
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert {"Conv", "Relu", "Sigmoid", "Add", "Gemm"} <= set(ops) or {"Conv", "Relu", "Sigmoid", "Add", "MatMul"} <= set(ops)
    assert not [n for n in proto.graph.node if n.domain]
    # standard ops only: the reference evaluator runs it and agrees with torch
    (res,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: data.numpy()})
    np.testing.assert_allclose(res, out0.detach().numpy(), rtol=1e-5, atol=1e-5)
    _assert_unchanged(before, _snapshot(model))
    assert torch.equal(model(data), out0)


def test_qat_model_one_fake_quantize_node_per_fake_quant():
    qat = _qat(_net())
    data = _data()
    out0 = qat(data)  # QAT state observes: take the snapshot after this run, compare after the export
    before = _snapshot(qat)
    proto = _export(export_to_onnx, qat, data)
    _assert_unchanged(before, _snapshot(qat))
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    qat.eval()

    fq_modules = {n: m for n, m in qat.named_modules() if isinstance(m, FakeQuantize)}
    nodes = _nodes(proto, "FakeQuantize")
    names = [_attrs(n)["name"].decode() for n in nodes]
    assert sorted(names) == sorted(fq_modules)  # one node per fake-quantize, each once
    for node in nodes:
        a = _attrs(node)
        fq = fq_modules[a["name"].decode()]
        assert a["dtype"].decode() == str(fq.dtype)
        assert (a["qmin"], a["qmax"]) == (fq.quant_min, fq.quant_max)
        assert a["state"].decode() == "QAT"
        np.testing.assert_array_equal(np.asarray(a["scale"], dtype=np.float32), fq.scale.numpy())
        if a["name"].decode().endswith("weight_fake_quant"):
            assert a["qscheme"].decode() == "per_channel_symmetric" and a["ch_axis"] == 0
            assert len(a["scale"]) == fq.scale.numel() > 1
            # its input is the float weight initializer
            inits = _initializers(proto)
            assert node.input[0] in inits and inits[node.input[0]].dtype == np.float32
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and not n.domain]
    assert len(convs) == 2
    producers = {o: n for n in proto.graph.node for o in n.output}
    # the conv's weight comes from a FakeQuantize node, its output goes to one
    assert all(producers[c.input[1]].op_type == "FakeQuantize" for c in convs)
    assert out0.shape == (1, 4, 6, 5) and torch.isfinite(out0).all()


def test_qat_model_standard_export_runs_like_the_qat_model():
    """operator_export_type=None: QuantizeLinear/DequantizeLinear pairs; the reference evaluator reproduces the
    QAT model's float path with fake quantization."""
    qat = _qat(_net())
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    qat.eval()
    data = _data()
    proto = _export(export_to_onnx, qat, data, operator_export_type=None)
    onnx.checker.check_model(proto)
    assert not [n for n in proto.graph.node if n.domain]
    n_fq = sum(isinstance(m, FakeQuantize) for m in qat.modules())
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == n_fq  # weights included
    (res,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: data.numpy()})
    set_fake_quantize(qat, FakeQuantState.QAT)
    for m in qat.modules():
        if isinstance(m, FakeQuantize):
            m.fixed_scale = True  # no observation in this comparison run
    with torch.no_grad():
        ref = qat(data).numpy()
    np.testing.assert_allclose(res, ref, rtol=0, atol=1e-5)  # the same grid points
    # opset 11 (the seeds' opset): QuantizeLinear has no axis yet, per-channel weights are float ops
    proto = _export(export_to_onnx, qat, data, operator_export_type=None, opset_version=11)
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    n_weights = sum(name.endswith("weight_fake_quant") for name, m in qat.named_modules())
    assert ops.count("Round") == n_weights == 3 and ops.count("QuantizeLinear") == n_fq - n_weights


def test_int16_fake_quant_standard_export_is_float_ops():
    qat = _qat(_net(), {"": default_qat_8bit_fake_quant_qconfig,
                        "module_name": [("sigmoid", default_qat_16bit_fake_quant_qconfig)]})
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    qat.eval()
    data = _data()
    proto = _export(export_to_onnx, qat, data, operator_export_type=None)
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Round") == 1 and ops.count("Div") == 1  # the int16 sigmoid output: clamp(round(x / s)) * s
    producers = {o: n for n in proto.graph.node for o in n.output}
    mul = next(n for n in proto.graph.node if n.op_type == "Mul" and producers[n.input[0]].op_type == "Min")
    s = numpy_helper.to_array(next(n for n in proto.graph.node if n.output[0] == mul.input[1]).attribute[0].t)
    np.testing.assert_array_equal(s.reshape(-1), qat.sigmoid.activation_post_process.scale.numpy())
    assert ops.count("DequantizeLinear") == sum(isinstance(m, FakeQuantize) for m in qat.modules()) - 1


@pytest.mark.parametrize("march", ["bernoulli2", "bayes"])
def test_quantized_model_one_qframe_node_per_integer_op(march):
    data = _data()
    float_linear = march == "bernoulli2"
    _, quantized = calibrate_and_convert(_net(float_linear), march, [data])
    out0 = quantized(data)
    before = _snapshot(quantized)
    proto = _export(export_quantized_onnx, quantized, data)
    _assert_unchanged(before, _snapshot(quantized))
    assert torch.equal(quantized(data), out0)

    qnodes = [n for n in proto.graph.node if n.domain == "qframe"]
    kinds = sorted(n.op_type for n in qnodes)
    expected = ["Quantize", "Conv2d", "Conv2d", "LookupTable", "Add", "DeQuantize"] + ([] if float_linear else ["Linear"])
    assert kinds == sorted(expected), kinds
    if float_linear:  # the float part of the converted model: as torch exports it
        assert {"Gemm", "MatMul"} & {n.op_type for n in proto.graph.node if not n.domain}
    assert [o.domain for o in proto.opset_import if o.domain == "qframe"] == ["qframe"]
    inits = _initializers(proto)
    mods = dict(quantized.named_modules())
    for node in qnodes:
        a = _attrs(node)
        if node.op_type in ("Conv2d", "Linear", "Add", "LookupTable"):
            assert a["march"].decode() == march
        if node.op_type == "Conv2d":
            conv = next(m for n, m in mods.items() if getattr(m, "qframe_name", None) == a["name"].decode())
            assert a["stride"] == list(conv.stride) and a["padding"] == list(conv.padding)
            assert a["groups"] == conv.groups and a["out_dtype"].decode() == "int8"
            lo, hi = conv._clamp_bounds()
            assert (a["clamp_min"], a["clamp_max"]) == (lo, hi)
            named = dict(zip([s.decode() for s in a["inputs"]], node.input))
            # the integer parameters are the node's inputs, bit for bit
            np.testing.assert_array_equal(inits[named["weight"]], conv.weight.numpy())
            assert inits[named["weight"]].dtype == np.int8
            np.testing.assert_array_equal(inits[named["bias"]], conv.bias.numpy())
            np.testing.assert_array_equal(inits[named["multiplier"]], conv.multiplier.numpy())
            np.testing.assert_array_equal(inits[named["shift"]], conv.shift.numpy())
        if node.op_type == "Add":
            add = quantized.add
            p = add.params
            assert (a["multiplier_a"], a["multiplier_b"], a["shift"]) == (p.multiplier_a, p.multiplier_b, p.shift)
        if node.op_type == "LookupTable":
            assert "table_slope" in a or "table_table" in a  # the march's table: segments (bayes) or direct
        if node.op_type == "Quantize":
            named = dict(zip([s.decode() for s in a["inputs"]], node.input))
            np.testing.assert_array_equal(inits[named["scale"]], quantized.quant.scale.numpy())
            assert a["dtype"].decode() == "qint8"
    # the int8 tensor between integer ops is typed
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    conv_out = next(n for n in qnodes if n.op_type == "Conv2d").output[0]
    assert types.get(conv_out) == onnx.TensorProto.INT8


def test_registered_symbolics_with_torch_onnx_export():
    """Users exporting with torch.onnx.export themselves get one qframe node per torch.ops.qframe call."""
    data = _data()
    _, quantized = calibrate_and_convert(_net(), "bayes", [data])
    register_onnx_ops()
    buf = io.BytesIO()
    torch.onnx.export(quantized.conv2, (torch.zeros(1, 4, 6, 4, dtype=torch.int8),), buf, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    assert [(n.domain, n.op_type) for n in proto.graph.node] == [("qframe", "Conv2d")]


@pytest.mark.parametrize("march", ["bernoulli2", "bayes"])
def test_hybrid_model_exports_standard_onnx(march):
    torch.manual_seed(0)
    data = torch.rand(1, 3, 8, 8)
    qat = prepare_qat_fx(
        HybridModel(),
        {"": default_qat_8bit_fake_quant_qconfig, "module_name": [("conv4", default_qat_out_8bit_fake_quant_qconfig)]},
        hybrid=True,
        hybrid_dict={"module_name": ["conv1.conv", "conv3"], "module_type": [_SeluModule]},
        march=march,
    )
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    qat.eval()
    with torch.no_grad():
        for _ in range(3):
            qat(torch.rand(1, 3, 8, 8))
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    out0 = qat(data)
    before = _snapshot(qat)
    proto = _export(export_to_onnx, qat, data, operator_export_type=None)
    _assert_unchanged(before, _snapshot(qat))
    assert torch.equal(qat(data), out0)
    onnx.checker.check_model(proto)
    assert not [n for n in proto.graph.node if n.domain]  # standard ONNX only
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Selu") == 3 and ops.count("Conv") == 5 and "PRelu" in ops
    n_fq = sum(isinstance(m, FakeQuantize) for m in qat.modules())
    assert ops.count("DequantizeLinear") == n_fq
    # conv1.conv and conv3 run on the CPU: float weights, no DequantizeLinear in front of them
    producers = {o: n for n in proto.graph.node for o in n.output}
    weight_from_dq = [c for c in proto.graph.node if c.op_type == "Conv" and c.input[1] in producers
                      and producers[c.input[1]].op_type == "DequantizeLinear"]
    assert len(weight_from_dq) == 3  # conv0, conv2, conv4
    (res,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: data.numpy()})
    assert res.shape == tuple(out0.shape)
    # the standard file runs: the reference evaluator agrees with the QAT model in VALIDATION state (float
    # rounding of the CPU ops only)
    np.testing.assert_allclose(res, out0.numpy(), rtol=0, atol=1e-4)

    # the converted hybrid model: integer nodes for the BPU part, the CPU part as torch exports it
    quantized = convert_fx(copy.deepcopy(qat))
    proto = _export(export_quantized_onnx, quantized, data)
    onnx.checker.check_model(proto, full_check=True)
    kinds = [(n.domain, n.op_type) for n in proto.graph.node if n.op_type not in ("Constant", "Identity")]
    assert kinds.count(("qframe", "Conv2d")) == 3 and kinds.count(("", "Conv")) == 2
    assert ("", "Selu") in kinds  # _SeluModule: on the CPU by hybrid_dict
    if march == "bernoulli2":  # PReLU and selu are not in bernoulli2's table: CPU ops
        assert kinds.count(("", "Selu")) == 3 and ("", "PRelu") in kinds
        assert {k for k in kinds if k[0]} == {("qframe", "Quantize"), ("qframe", "Conv2d"), ("qframe", "DeQuantize")}
    else:  # bayes runs PReLU and the first selu (a lookup table) as integer ops
        assert {("qframe", "PReLU"), ("qframe", "LookupTable")} <= set(kinds)


def test_bad_input_names_the_module_and_the_function_to_use(tmp_path):
    data = _data()
    qat, quantized = calibrate_and_convert(_net(), "bayes", [data])
    with pytest.raises(TypeError, match=r"'quant' \(qframe_core\.nn\.quantized\.stubs\.Quantize\).*export_quantized_onnx"):
        export_to_onnx(quantized, data, tmp_path / "q.onnx")
    with pytest.raises(TypeError, match=r"'quant' \(qframe_core\.nn\.qat\.stubs\.QuantStub\).*QAT model.*export_to_onnx"):
        export_quantized_onnx(qat, data, tmp_path / "q.onnx")
    with pytest.raises(TypeError, match=r"no integer module.*export_to_onnx"):
        export_quantized_onnx(_net(), data, tmp_path / "q.onnx")
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        export_to_onnx(lambda x: x, data, tmp_path / "q.onnx")
    assert not list(tmp_path.iterdir())  # nothing written


def test_export_to_path_and_checker(tmp_path):
    model = _net()
    path = tmp_path / "float.onnx"  # a pathlib.Path, as torch.onnx.export takes it
    export_to_onnx(model, (_data(),), path, input_names=["image"], output_names=["logits"],
                   enable_onnx_checker=True)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]


def test_copy_is_exported_not_the_model():
    """A model that cannot be deep-copied is refused with the reason, before anything runs."""
    model = _net()
    model.unpicklable = copy  # a module object: deepcopy cannot copy it
    with pytest.raises(TypeError, match="cannot be copied"):
        export_to_onnx(model, _data(), io.BytesIO())


class _Cell(nn.Module):
    def __init__(self):
        super().__init__()
        self.qx, self.qh, self.qc = QuantStub(), QuantStub(), QuantStub()
        self.cell = nn.LSTMCell(8, 16)
        self.dh, self.dc = DeQuantStub(), DeQuantStub()

    def forward(self, x, h, c):
        h, c = self.cell(self.qx(x), (self.qh(h), self.qc(c)))
        return self.dh(h), self.dc(c)


def test_lstm_cell_functional_fake_quants_and_two_outputs():
    """LSTMCell's fixed gate grids are fake-quantized by a function call, not a module: they are FakeQuantize
    nodes too (standard ops with operator_export_type=None); the integer cell is one node with two outputs."""
    from qframe_core.quantization import fake_quantize as fq_module

    torch.manual_seed(0)
    inputs = (torch.randn(4, 8), torch.randn(4, 16), torch.randn(4, 16))
    qat, quantized = calibrate_and_convert(_Cell().eval(), "bayes", inputs)
    proto = _export(export_to_onnx, qat, inputs)
    ops = [n.op_type for n in proto.graph.node]
    assert "PythonOp" not in ops
    gates = [_attrs(n) for n in _nodes(proto, "FakeQuantize") if "name" not in _attrs(n)]
    assert len(gates) == 5  # sigmoid i, f, o; tanh g; tanh c' on the fixed 1/32767 qint16 grid
    assert all(a["dtype"] == b"qint16" and a["scale"] == pytest.approx([1 / 32767]) for a in gates)
    std = _export(export_to_onnx, qat, inputs, operator_export_type=None)
    onnx.checker.check_model(std)
    assert not [n for n in std.graph.node if n.domain]
    assert "symbolic" not in vars(fq_module._FakeQuantSTE)  # the export's hook is gone
    out0 = quantized(*inputs)
    proto = _export(export_quantized_onnx, quantized, inputs)
    (cell,) = _nodes(proto, "LSTMCell")
    assert len(cell.output) == 2 and len(proto.graph.output) == 2
    assert [_attrs(n)["name"] for n in _nodes(proto, "DeQuantize")] == [b"dh", b"dc"]
    for a, b in zip(quantized(*inputs), out0):
        assert torch.equal(a, b)


def test_an_op_without_standard_form_fails_the_standard_export_only():
    class Svd(nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x)[1]

    x = torch.randn(3, 3)
    with pytest.raises(Exception, match="linalg_svd") as info:
        export_to_onnx(Svd(), x, io.BytesIO(), operator_export_type=None)
    assert "export_to_onnx: torch.onnx.export" in info.value.__notes__[0]
    assert "operator_export_type=None every op must have a standard ONNX form" in info.value.__notes__[0]
    proto = _export(export_to_onnx, Svd(), x)  # the default keeps it as it is, for viewing
    assert "linalg_svd" in [n.op_type for n in proto.graph.node]


def test_lsq_fake_quantize_exports_its_effective_scale():
    qat = _qat(_net(), {"": default_qat_8bit_lsq_quant_qconfig})
    with torch.no_grad():
        qat.conv2.activation_post_process.scale.neg_()  # a learned scale may change sign: |scale| is used
    proto = _export(export_to_onnx, qat, _data())
    nodes = {_attrs(n)["name"].decode(): _attrs(n) for n in _nodes(proto, "FakeQuantize")}
    a = nodes["conv2.activation_post_process"]
    assert a["kind"] == b"LSQFakeQuantize"
    np.testing.assert_array_equal(np.asarray(a["scale"], dtype=np.float32),
                                  qat.conv2.activation_post_process.effective_scale().numpy())
    assert a["scale"][0] > 0
