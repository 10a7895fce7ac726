"""dev-guide.zh.md "可视化：ONNX 模型可视化": the seed's Net exported at the three stages with
``export_to_onnx`` (float, QAT) and ``export_quantized_onnx`` (converted), on March.BAYES.

Imports renamed (horizon_plugin_pytorch -> qframe_core, horizon_nn -> qframe_core.nn). Deviations, each for a
stated reason:

* ``prepare_qat_fx``/``convert_fx`` come from ``qframe_core.quantization`` (the seed's ``.quantization.quantize_fx``
  submodule is not one of qframe's paths);
* CPU instead of ``cuda`` (the integer kernels run on the CPU);
* the seed runs ``qat_net(data, data)`` before defining ``data``: ``data`` is defined first;
* bayes' op table refuses two of the seed's resize layers: ``nn.Upsample(scale_factor=1.3, mode="bilinear")``
  (a non-integer factor needs ``recompute_scale_factor=True``) and ``nn.UpsamplingBilinear2d`` (align_corners=True;
  the table allows False/None only), so they are ``nn.Upsample(..., mode="bilinear", recompute_scale_factor=True)``
  with the seed's factors 1.3 and 0.7;
* the files go to a temporary directory (the seed writes to the current one).

``share_op=True`` calls ``cat_op`` twice: prepare gives each call site its own copy and says so with a
SharedModuleWarning.
"""

import os
from copy import deepcopy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.quantization import DeQuantStub, QuantStub

import qframe_core as horizon  # noqa: F401  (the seed imports it)
import qframe_core.march as march_mod
from qframe_core import nn as horizon_nn
from qframe_core.errors import SharedModuleWarning
from qframe_core.march import March, set_march
from qframe_core.nn.quantized import FloatFunctional
from qframe_core.quantization import FakeQuantize, FakeQuantState, convert_fx, prepare_qat_fx, set_fake_quantize
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig
from qframe_core.utils.onnx_helper import export_quantized_onnx, export_to_onnx

# the seed's nn.Softmax() has no dim (torch warns; the seed's code is kept as it is)
pytestmark = pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax:UserWarning")


class Net(nn.Module):
    def __init__(self, quant=False, share_op=True):
        super(Net, self).__init__()

        self.quant_stubx = QuantStub()
        self.quant_stuby = QuantStub()
        self.mul_op = FloatFunctional()
        self.cat_op = FloatFunctional()
        self.quantized_ops = nn.Sequential(
            nn.ReLU(),
            nn.Sigmoid(),
            nn.Softmax(),
            nn.SiLU(),
            horizon_nn.Interpolate(
                scale_factor=2, recompute_scale_factor=True
            ),
            horizon_nn.Interpolate(
                scale_factor=2.3, recompute_scale_factor=True
            ),
            nn.AvgPool2d(kernel_size=4),
            # the seed: nn.Upsample(scale_factor=1.3, mode="bilinear") (see the module docstring)
            nn.Upsample(scale_factor=1.3, mode="bilinear", recompute_scale_factor=True),
            # the seed: nn.UpsamplingBilinear2d(scale_factor=0.7) (see the module docstring)
            nn.Upsample(scale_factor=0.7, mode="bilinear", recompute_scale_factor=True),
        )
        self.dequant_stub = DeQuantStub()
        self.float_ops = nn.Sequential(
            nn.Tanh(),
            nn.LeakyReLU(),
            nn.PReLU(),
            nn.UpsamplingNearest2d(scale_factor=0.7),
        )
        self.quant = quant
        self.share_op = share_op

    def forward(self, x, y):
        x = self.quant_stubx(x)
        y = self.quant_stuby(y)
        z = self.mul_op.mul(x, y)  # noqa: F841  (the seed's unused product: torch's export drops it)
        x = self.cat_op.cat((x, y), dim=1)
        if self.share_op:
            x = self.cat_op.cat((x, y), dim=1)
        x = self.quantized_ops(x)
        x = self.dequant_stub(x)
        if not self.quant:
            x = self.float_ops(x)
        return x


def _run_seed():
    torch.manual_seed(0)
    # **RDK X3** 设置BERNOULLI2， **RDK Ultra** 设置为BAYES。
    set_march(March.BAYES)
    device = torch.device("cpu")  # the seed: cuda
    data = torch.arange(1 * 3 * 4 * 4) / 100 + 1  # the seed defines data after its first use
    data = data.reshape((1, 3, 4, 4))
    data = data.to(torch.float32).to(device)
    float_net = Net(quant=True, share_op=True).to(device)
    float_net2 = deepcopy(float_net)
    with pytest.warns(SharedModuleWarning, match=r"'cat_op' is called 2 times"):
        qat_net = prepare_qat_fx(
            float_net2, {"": default_qat_8bit_fake_quant_qconfig}
        )
    qat_net(data, data)
    qat_net2 = deepcopy(qat_net)
    quantized_net = convert_fx(qat_net2)

    # what an export could change, taken before the exports
    snapshots = {name: {k: v.clone() for k, v in m.state_dict().items()}
                 for name, m in (("float", float_net), ("qat", qat_net), ("quantized", quantized_net))}
    qat_copy = deepcopy(qat_net)
    outputs = {"float": float_net(data, data), "quantized": quantized_net(data, data)}

    export_to_onnx(float_net, (data, data), "float_test.onnx")
    export_to_onnx(qat_net, (data, data), "qat_test.onnx")
    export_quantized_onnx(quantized_net, (data, data), "quantized_test.onnx")
    return dict(data=data, float_net=float_net, qat_net=qat_net, quantized_net=quantized_net,
                snapshots=snapshots, qat_copy=qat_copy, outputs=outputs)


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """The seed run once for this module's tests (in a temporary directory, the march restored after)."""
    tmp_path = tmp_path_factory.mktemp("onnx_seed")
    cwd, saved_march = os.getcwd(), march_mod._GLOBAL
    os.chdir(tmp_path)
    try:
        yield _run_seed(), tmp_path
    finally:
        os.chdir(cwd)
        march_mod._GLOBAL = saved_march


def _load(path):
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)  # the qframe domain is declared; its nodes are not checked
    return proto


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_seed_writes_three_onnx_files_and_leaves_the_models_unchanged(seed):
    s, tmp_path = seed
    for name in ("float_test.onnx", "qat_test.onnx", "quantized_test.onnx"):
        assert (tmp_path / name).stat().st_size > 0
        _load(tmp_path / name)
    data = s["data"]
    for name, model in (("float", s["float_net"]), ("qat", s["qat_net"]), ("quantized", s["quantized_net"])):
        after = model.state_dict()
        assert after.keys() == s["snapshots"][name].keys()
        for k, v in s["snapshots"][name].items():
            assert torch.equal(after[k], v), (name, k)
    assert torch.equal(s["float_net"](data, data), s["outputs"]["float"])
    assert torch.equal(s["quantized_net"](data, data), s["outputs"]["quantized"])
    # the QAT model: same fake-quantize states, and bit-identical results with its pre-export copy
    for a, b in zip(s["qat_net"].modules(), s["qat_copy"].modules()):
        if isinstance(a, FakeQuantize):
            assert a.state is b.state is FakeQuantState.QAT
    exported, untouched = deepcopy(s["qat_net"]), deepcopy(s["qat_copy"])
    for m in (exported, untouched):
        set_fake_quantize(m, FakeQuantState.VALIDATION)
        m.eval()
    assert torch.equal(exported(data, data), untouched(data, data))


def test_float_onnx_is_the_community_ops(seed):
    _, tmp_path = seed
    proto = _load(tmp_path / "float_test.onnx")
    ops = [n.op_type for n in proto.graph.node]
    assert not [n for n in proto.graph.node if n.domain]
    assert {"Concat", "Relu", "Sigmoid", "Softmax", "Mul", "Resize", "AveragePool"} <= set(ops)
    assert ops.count("Resize") == 4 and ops.count("Sigmoid") == 2  # SiLU: x * sigmoid(x)


def test_qat_onnx_has_one_fake_quantize_node_per_fake_quant(seed):
    s, tmp_path = seed
    proto = _load(tmp_path / "qat_test.onnx")
    nodes = [n for n in proto.graph.node if n.op_type == "FakeQuantize"]
    assert {n.domain for n in nodes} == {"qframe"}
    fqs = {n: m for n, m in s["qat_net"].named_modules() if isinstance(m, FakeQuantize)}
    names = sorted(_attrs(n)["name"].decode() for n in nodes)
    # every fake-quantize once, except the seed's unused product (torch's export drops dead code)
    assert names == sorted(set(fqs) - {"mul_op.activation_post_process"})
    assert {"cat_op.activation_post_process", "cat_op_1.activation_post_process"} <= set(names)  # one per call
    for node in nodes:
        a = _attrs(node)
        fq = fqs[a["name"].decode()]
        assert a["dtype"].decode() == str(fq.dtype) and (a["qmin"], a["qmax"]) == (fq.quant_min, fq.quant_max)
        np.testing.assert_array_equal(np.asarray(a["scale"], dtype=np.float32), fq.scale.numpy())
    # the softmax's exp grid is the fixed qint16 1/32767 one
    exp = next(_attrs(n) for n in nodes if _attrs(n)["name"].decode().endswith("exp_post_process"))
    assert exp["dtype"].decode() == "qint16" and exp["fixed_scale"] == 1
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Concat") >= 2 and "Softmax" not in ops  # the QAT softmax: exp, sum, div around its grids


def test_quantized_onnx_has_one_qframe_node_per_integer_op(seed):
    s, tmp_path = seed
    proto = _load(tmp_path / "quantized_test.onnx")
    qnodes = [n for n in proto.graph.node if n.domain == "qframe"]
    kinds = sorted(n.op_type for n in qnodes)
    assert kinds == sorted(["Quantize", "Quantize", "Cat", "Cat", "LookupTable", "Softmax", "LookupTable",
                            "Upsample", "Upsample", "AvgPool2d", "Upsample", "Upsample", "DeQuantize"])
    assert [n.op_type for n in proto.graph.node if not n.domain and n.op_type != "Identity"] == ["Relu"]
    mods = dict(s["quantized_net"].named_modules())
    for node in qnodes:
        a = _attrs(node)
        name = a["name"].decode()
        if node.op_type == "Cat":
            p = mods["cat_op" if name == "cat_op" else name].params
            assert a["params_multipliers"] == list(p.multipliers) and a["params_shifts"] == list(p.shifts)
            assert a["march"].decode() == "bayes"
        if node.op_type == "LookupTable":
            table = mods[name].table
            np.testing.assert_array_equal(numpy_helper.to_array(a["table_base"]), table.base.numpy())
            np.testing.assert_array_equal(numpy_helper.to_array(a["table_slope"]), table.slope.numpy())
    # integer tensors between the integer nodes
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    cats = [n for n in qnodes if n.op_type == "Cat"]
    assert all(types[n.output[0]] == onnx.TensorProto.INT8 for n in cats)
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    shape = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert shape == list(s["outputs"]["quantized"].shape)
