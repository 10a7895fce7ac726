"""Deployment helpers: check_model, compile_model/load_compiled, perf_model, visualize_model on both marches."""

from __future__ import annotations

import copy
import json
import os
import warnings
import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn

from qframe_core.errors import QframeError, UnsupportedOpError
from qframe_core.nn.quantized import FloatFunctional
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    check_model,
    compile_model,
    convert_fx,
    load_compiled,
    perf_model,
    prepare_qat_fx,
    set_fake_quantize,
    visualize_model,
)
from qframe_core.quantization.deploy import ModelCheckError
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig
from tests.quant_helpers import calibrate_and_convert

pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")]

MARCHES = ("bernoulli2", "bayes")
OTHER = {"bernoulli2": "bayes", "bayes": "bernoulli2"}
SVG = "{http://www.w3.org/2000/svg}"


class SmallCNN(nn.Module):
    """conv-bn-relu, a conv fused with an add, avgpool, a sigmoid table lookup and a head.

    bernoulli2 computes 4-D tensors only and has no Linear: its head is a 4x4 conv (same MACs)."""

    def __init__(self, linear_head: bool):
        super().__init__()
        self.linear_head = linear_head
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.add = FloatFunctional()
        self.pool = nn.AvgPool2d(2)
        self.sig = nn.Sigmoid()
        self.fc = nn.Linear(8 * 4 * 4, 10) if linear_head else nn.Conv2d(8, 10, 4)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.relu(self.bn(self.conv(x)))
        x = self.add.add(x, self.conv2(x))
        x = self.sig(self.pool(x))
        if self.linear_head:
            x = torch.flatten(x, 1)
        return self.dequant(self.fc(x))


class DoublesAfterDequant(SmallCNN):
    def forward(self, x):
        return super().forward(x) * 2  # float compute after the DeQuantStub stays in the model


#: the ops of the converted SmallCNN, in execution order (conv2 is fused into the add: ConvAdd2d)
OPS = {
    "bernoulli2": ["quant", "conv", "add", "pool", "sig", "fc", "dequant"],
    "bayes": ["quant", "conv", "add", "pool", "sig", "aten::flatten", "fc", "dequant"],
}


@pytest.fixture(scope="module", params=MARCHES)
def converted(request):
    march = request.param
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    qat, quantized = calibrate_and_convert(SmallCNN(march == "bayes"), march, [x])
    return march, qat, quantized, _trace(quantized, x), x


def _trace(model, x):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, x)


def _hybrid(march, x, names):
    qat = prepare_qat_fx(SmallCNN(march == "bayes"), {"": default_qat_8bit_fake_quant_qconfig}, march=march,
                         hybrid=True, hybrid_dict={"module_name": names})
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        qat(x)
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    return convert_fx(qat)


# -- check_model ------------------------------------------------------------------------------------
def test_check_model_passes_the_converted_model_and_its_trace(converted, capsys):
    march, _, quantized, traced, x = converted
    for model, inputs in ((quantized, [x]), (traced, x)):
        report = check_model(model, inputs, advice=1)
        out = capsys.readouterr().out
        assert "This model is supported!" in out and "qframe model check PASS" in out
        assert report.passed and report.march == march
        assert [r.name for r in report.layers] == OPS[march]
        rows = {r.name: r for r in report.layers}
        # MACs from the shapes: conv 3->8 3x3 on 2x8x8, conv2 8->8 3x3, head 128->10 (both heads)
        assert rows["conv"].macs == 2 * 8 * 8 * 8 * (3 * 3 * 3)
        assert rows["add"].macs == 2 * 8 * 8 * 8 * (8 * 3 * 3)
        assert rows["fc"].macs == 2 * 10 * 128
        assert rows["quant"].inputs == ("float32[2, 3, 8, 8]",) and rows["quant"].outputs == ("int8[2, 3, 8, 8]",)
        assert rows["dequant"].outputs[0].startswith("float32[2, 10")
        for line in ("layer", "MACs", "27,648", "73,728"):
            assert line in out


def test_check_model_defaults_to_the_march_the_model_was_converted_for(converted):
    march, _, quantized, traced, x = converted
    from qframe_core.march import march as march_scope

    with march_scope(OTHER[march]):  # the current march differs: the model's own march wins
        assert check_model(quantized, x).march == march
        assert check_model(traced, x).march == march


def test_check_model_on_a_saved_and_loaded_trace(converted, tmp_path):
    """torch.jit.load drops tensor types and tracer scopes: types come from a run, modules from the call stack."""
    march, _, quantized, traced, x = converted
    torch.jit.save(traced, str(tmp_path / "int_model.pt"))
    loaded = torch.jit.load(str(tmp_path / "int_model.pt"))
    report = check_model(loaded, [x])
    assert report.march == march and [r.name for r in report.layers] == OPS[march]
    assert report.total_macs == check_model(quantized, x).total_macs
    assert report.layers[1].outputs == ("int8[2, 8, 8, 8]",)


def test_a_frozen_artifact_is_refused_with_the_reason(converted, tmp_path):
    _, _, quantized, _, x = converted
    compile_model(quantized, x, hbm=tmp_path / "m.hbm", opt="O1")
    frozen, _ = load_compiled(tmp_path / "m.hbm")
    with pytest.raises(ModelCheckError, match=r"no submodules.*frozen program.*pass the converted model"):
        check_model(frozen, x)


def test_march_mismatch_fails(converted):
    march, _, quantized, traced, x = converted
    for model in (quantized, traced):
        with pytest.raises(ModelCheckError, match=rf"converted for march '{march}'.*against march '{OTHER[march]}'"
                                                  rf".*pass march='{march}'"):
            check_model(model, [x], march=OTHER[march])


def test_unconverted_qat_model_fails(converted):
    march, qat, _, _, x = converted
    with pytest.raises(ModelCheckError, match=r"(?s)QAT/calibration model, not a converted one.*'conv' "
                                              r"\(qframe_core\.nn\.qat.*convert_fx\(qat_model\)") as info:
        check_model(qat, [x])
    assert isinstance(info.value, UnsupportedOpError) and f"march '{march}'" in str(info.value)


@pytest.mark.parametrize("march", MARCHES)
def test_hybrid_model_fails_check_and_compile_naming_the_float_module(march, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    hybrid = _hybrid(march, x, ["sig"])
    pattern = (rf"(?s)march '{march}' cannot run 1 part\(s\).*'sig' \(torch\.nn\.Sigmoid\) computes in float "
               rf"\(aten::sigmoid\).*混合模型不能通过 check_model 也不能编译.*Way out")
    with pytest.raises(ModelCheckError, match=pattern) as info:
        check_model(hybrid, [x])
    assert len(info.value.problems) == 1
    with pytest.raises(ModelCheckError, match=pattern):
        check_model(_trace(hybrid, x), [x])
    with pytest.raises(ModelCheckError, match=pattern):
        compile_model(hybrid, [x], hbm=str(tmp_path / "hybrid.hbm"))
    assert not (tmp_path / "hybrid.hbm").exists()


def test_float_op_after_the_dequant_stub_fails(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    _, quantized = calibrate_and_convert(DoublesAfterDequant(True), "bayes", [x])
    with pytest.raises(ModelCheckError, match=r"(?s)forward of the model itself \(torch\.fx\.GraphModule\) computes in "
                                              r"float \(aten::mul\).*march 'bayes'"):
        check_model(quantized, x)


def test_input_source(converted):
    march, _, quantized, _, x = converted
    assert check_model(quantized, [x], input_source=["pyramid"]).input_sources == ["pyramid"]
    assert check_model(quantized, [x], input_source="resizer").input_sources == ["resizer"]
    with pytest.raises(ValueError, match=r"input_source 'camera' is not one of \('ddr', 'pyramid', 'resizer'\)"):
        check_model(quantized, [x], input_source="camera")
    with pytest.raises(ValueError, match=r"lists 2 source\(s\) for 1 model input"):
        check_model(quantized, [x], input_source=["ddr", "ddr"])


def test_pyramid_input_must_be_an_image():
    class FourChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.conv, self.dequant = QuantStub(), nn.Conv2d(4, 4, 1), DeQuantStub()

        def forward(self, x):
            return self.dequant(self.conv(self.quant(x)))

    x = torch.randn(1, 4, 4, 4)
    _, quantized = calibrate_and_convert(FourChannels(), "bayes", [x])
    assert check_model(quantized, x, input_source="ddr").passed
    with pytest.raises(ModelCheckError, match=r"model input 0 has shape \[1, 4, 4, 4\] but input_source 'pyramid'.*"
                                              r"march 'bayes'.*C = 1 \(Y\) or 3.*input_source='ddr'"):
        check_model(quantized, x, input_source="pyramid")


def test_integer_tensors_above_the_marchs_rank_fail_on_bernoulli2_only():
    class FiveD(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.conv, self.dequant = QuantStub(), nn.Conv2d(3, 3, 1), DeQuantStub()

        def forward(self, x):
            return self.dequant(self.conv(self.quant(x)).unsqueeze(1))

    x = torch.randn(1, 3, 4, 4)
    _, bayes = calibrate_and_convert(FiveD(), "bayes", [x])
    assert check_model(bayes, x).passed  # bayes computes any rank
    _, bernoulli2 = calibrate_and_convert(FiveD(), "bernoulli2", [x])
    with pytest.raises(ModelCheckError, match=r"'aten::unsqueeze' \(aten::unsqueeze\) produces the 5-D tensor "
                                              r"int8\[1, 1, 3, 4, 4\]: march 'bernoulli2' computes tensors of rank <= 4"):
        check_model(bernoulli2, x)


def test_bad_arguments():
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a list/tuple"):
        check_model(nn.Identity(), {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="opt='O7' is not an optimization level"):
        compile_model(nn.Identity(), torch.zeros(1), hbm="unused.hbm", opt="O7")


# -- compile_model / load_compiled -------------------------------------------------------------------
def test_compile_writes_an_artifact_that_reproduces_the_model(converted, tmp_path, capsys):
    march, _, quantized, traced, x = converted
    path = tmp_path / "out" / "model.hbm"
    manifest = compile_model(quantized, [x], hbm=str(path), input_source="pyramid", opt="O1")
    assert "qframe model compilation SUCCESS" in capsys.readouterr().out
    assert path.exists() and path.suffix == ".hbm"
    loaded, saved = load_compiled(path)
    assert saved == manifest
    assert saved["march"] == march and saved["opt"] == "O1" and saved["input_source"] == ["pyramid"]
    assert saved["inputs"][0]["shape"] == [2, 3, 8, 8] and saved["inputs"][0]["dtype"] == "float32"
    assert saved["num_ops"] == len(OPS[march]) and saved["macs"] == 2 * 8 * 8 * 8 * (27 + 72) + 2 * 10 * 128
    # bit-identical on fresh inputs of another batch size and range, not only the example
    torch.manual_seed(1)
    for fresh in (torch.randn(5, 3, 8, 8) * 3, torch.rand(1, 3, 8, 8)):
        with torch.no_grad():
            assert torch.equal(loaded(fresh), quantized(fresh))
    # from the traced model, without graph optimization; an opt given as an int
    path0 = tmp_path / "model0.pt"
    assert compile_model(traced, x, hbm=path0, opt=0)["optimizations"] == []
    loaded0, _ = load_compiled(path0)
    assert torch.equal(loaded0(x), loaded(x))


def test_load_compiled_refuses_a_plain_torchscript_file(converted, tmp_path):
    _, _, _, traced, _ = converted
    torch.jit.save(traced, str(tmp_path / "plain.pt"))
    with pytest.raises(QframeError, match="not an artifact written by qframe_core.quantization.compile_model"):
        load_compiled(tmp_path / "plain.pt")


# -- perf_model ---------------------------------------------------------------------------------------
def test_perf_model_measures_and_writes_html_and_json(converted, tmp_path, capsys):
    march, _, quantized, _, x = converted
    threads_before = torch.get_num_threads()
    figures = perf_model(quantized, [x], out_dir=str(tmp_path / "perf"), layer_details=True, warmup=3,
                         iterations=10, threads=1)
    out = capsys.readouterr().out
    # named after the float model's class (the seeds: FxQATReadyMobileNetV2.html), not "GraphModule"
    assert "FPS=" in out and "latency = " in out and "DDR = " in out and "SmallCNN.html" in out
    html = (tmp_path / "perf" / "SmallCNN.html").read_text()
    data = json.loads((tmp_path / "perf" / "SmallCNN.json").read_text())
    assert figures["fps"] == data["fps"] and figures["html"].endswith("SmallCNN.html")
    assert (tmp_path / "perf" / "SmallCNN.hbm").exists()
    assert data["model"] == "SmallCNN" and "<h1>SmallCNN on march" in html
    lat = data["latency_us"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"]
    assert data["fps"] == pytest.approx(2 * 1e6 / lat["median"])
    assert "host CPU" in data["measured_on"]
    # activations: each op reads its inputs and writes its outputs once (flatten is a view)
    head_out = [2, 10] if march == "bayes" else [2, 10, 1, 1]
    n_head = 20
    activations = (2 * 3 * 64 * 4 + 2 * 3 * 64) + (2 * 3 * 64 + 2 * 8 * 64) + (2 * 8 * 64 * 2) \
        + (2 * 8 * 64 + 2 * 8 * 16) + (2 * 8 * 16 * 2) + (2 * 8 * 16 + n_head) + (n_head + n_head * 4)
    assert data["activation_bytes"] == activations
    int8_weights = 8 * 27 + 8 * 72 + 10 * 128
    assert data["weight_bytes"] >= int8_weights and data["ddr_bytes"] == data["weight_bytes"] + activations
    rows = data["layers"]
    assert [r["layer"] for r in rows] == OPS[march]
    assert all(r["time_us"] > 0 for r in rows)
    assert rows[-1]["outputs"] == [f"float32{head_out}"]
    total = sum(r["time_us"] for r in rows)
    assert data["layers_total_us"] == pytest.approx(total)
    # each op timed alone adds up to roughly the whole (fastest runs: robust to a busy host)
    assert 0.3 * lat["min"] < sum(r["min_us"] for r in rows) < 3 * lat["min"]
    assert data["torch_threads"] == 1 and torch.get_num_threads() == threads_before
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    conv = rows[OPS[march].index("conv")]
    assert conv["gops"] == pytest.approx(2 * conv["macs"] / (conv["time_us"] * 1e3))
    # self-contained: nothing fetched from elsewhere
    assert "<svg" in html and "<script" not in html and "<link" not in html and "src=" not in html
    assert f"{lat['median']:,.1f}" in html


class TinyPerfNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.conv(self.quant(x)))


def test_perf_model_names_the_report_after_the_float_model_class(tmp_path, capsys):
    """prepare_qat_fx records the float model's class in the GraphModule's meta; convert_fx (whose deep copy
    keeps meta) names the integer model after it, so its trace (the seeds pass the trace) does too."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    qat = prepare_qat_fx(TinyPerfNet(), {"": default_qat_8bit_fake_quant_qconfig}, march="bayes")
    assert qat.meta["qframe_model_class"] == "TinyPerfNet" and type(qat).__name__ == "TinyPerfNet"
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        qat(x)
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    copied = copy.deepcopy(qat)  # a deep copy of a GraphModule is a "GraphModule"; its meta keeps the name
    assert type(copied).__name__ == "GraphModule" and copied.meta["qframe_model_class"] == "TinyPerfNet"
    quantized = convert_fx(copied)
    assert quantized.meta["qframe_model_class"] == "TinyPerfNet" and str(quantized).startswith("TinyPerfNet(")
    traced = _trace(quantized, x)
    assert traced.original_name == "TinyPerfNet"
    for i, model in enumerate((quantized, traced)):
        figures = perf_model(model, [x], out_dir=str(tmp_path / f"perf{i}"), warmup=0, iterations=1)
        assert figures["html"] == str(tmp_path / f"perf{i}" / "TinyPerfNet.html") and figures["model"] == "TinyPerfNet"
        assert sorted(os.listdir(tmp_path / f"perf{i}")) == ["TinyPerfNet.hbm", "TinyPerfNet.html", "TinyPerfNet.json"]
    assert "(see " + str(tmp_path / "perf1" / "TinyPerfNet.html") + ")" in capsys.readouterr().out
    assert check_model(traced, x).model == "TinyPerfNet"
    # a GraphModule without the record (and not named by qframe) keeps the fallback name
    anonymous = copy.deepcopy(quantized)
    del anonymous.meta["qframe_model_class"]
    figures = perf_model(anonymous, [x], out_dir=str(tmp_path / "anon"), warmup=0, iterations=1)
    assert figures["html"].endswith("GraphModule.html") and (tmp_path / "anon" / "GraphModule.json").exists()


# -- visualize_model ------------------------------------------------------------------------------------
def test_visualize_model_writes_one_svg_node_per_op(converted, tmp_path):
    march, _, _, traced, x = converted
    path = visualize_model(traced, [x], save_path=str(tmp_path / "model.svg"), show=False)
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    nodes = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    edges = [g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]
    ops = OPS[march]
    assert len(nodes) == 1 + len(ops) + 1  # input, ops, output
    assert len(edges) == len(ops) + 1  # a chain: input -> ops -> output
    labels = [" ".join(t.text or "" for t in g.iter(f"{SVG}text")) for g in nodes]
    for op, label in zip(ops, labels[1:-1]):
        assert op in label
    assert "int8[2, 8, 8, 8]" in labels[1 + ops.index("conv")]
    # layered: every edge goes down, and no two boxes overlap
    boxes = {g.get("id"): [float(g.find(f"{SVG}rect").get(k)) for k in ("x", "y", "width", "height")] for g in nodes}
    for e in edges:
        assert boxes[e.get("data-from")][1] < boxes[e.get("data-to")][1]
    items = list(boxes.values())
    for i, (x1, y1, w1, h1) in enumerate(items):
        for x2, y2, w2, h2 in items[i + 1:]:
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1


def test_visualize_model_lays_out_branches_side_by_side(tmp_path):
    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.a, self.b = QuantStub(), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.cat, self.dequant = FloatFunctional(), DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            return self.dequant(self.cat.cat([self.a(x), self.b(x)], dim=1))

    x = torch.randn(1, 3, 4, 4)
    _, quantized = calibrate_and_convert(TwoBranches(), "bayes", [x])
    traced = _trace(quantized, x)
    assert [r.name for r in check_model(traced, x).layers] == ["quant", "a", "b", "cat", "dequant"]
    # the FloatFunctional call's scope is kept in the saved program's call stack
    torch.jit.save(traced, str(tmp_path / "t.pt"))
    loaded = torch.jit.load(str(tmp_path / "t.pt"))
    assert [r.name for r in check_model(loaded, x).layers] == ["quant", "a", "b", "cat", "dequant"]
    root = ET.parse(visualize_model(quantized, x, save_path=tmp_path / "b.svg")).getroot()
    nodes = {g.get("id"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    edges = [(g.get("data-from"), g.get("data-to")) for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]
    assert len(nodes) == 1 + 5 + 1
    # in -> quant -> a, b -> cat -> dequant -> out
    assert len(edges) == 7
    ys = {k: float(g.find(f"{SVG}rect").get("y")) for k, g in nodes.items()}
    a, b = [k for k, g in nodes.items() if any((t.text or "").strip() in ("a", "b") for t in g.iter(f"{SVG}text"))]
    assert ys[a] == ys[b]  # same rank, side by side
    assert os.path.getsize(tmp_path / "b.svg") > 0
