"""torch.jit.trace of an integer model records qframe operators; qframe_core.jit saves and reloads it."""

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import qframe_core
from qframe_core import jit
from qframe_core.march import march
from qframe_core.quantization import FakeQuantState, convert_fx, prepare_qat_fx, set_fake_quantize
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8
from qframe_core.quantization.qconfig import default_qat_8bit_weight_32bit_out_fake_quant_qconfig as Q32
from qframe_core.quickstart import DigitsNet


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    with march("bayes"):
        q = prepare_qat_fx(DigitsNet().eval(), {"": Q8, "module_name": {"classifier": Q32}})
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    quantized = convert_fx(q)
    script = torch.jit.trace(quantized, x)
    path = tmp_path_factory.mktemp("jit") / "int_model.pt"
    jit.save(script, str(path))
    return quantized, script, path, x


def test_trace_records_operators_not_constants(traced):
    quantized, script, _, x = traced
    graph = str(script.inlined_graph)
    assert graph.count("qframe::conv2d") == 4  # conv1, conv2, the fused conv+add, the classifier
    other = torch.rand(4, 1, 8, 8) * 2 - 1  # a different input: a constant-folded trace would fail here
    assert torch.equal(script(other), quantized(other))
    assert torch.equal(script(x), quantized(x))


def test_save_and_load_in_a_fresh_process(traced):
    quantized, _, path, x = traced
    torch.save(x, str(path) + ".x")
    torch.save(quantized(x), str(path) + ".y")
    code = textwrap.dedent(f"""
        import torch, warnings
        from qframe_core import jit
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # same version: no qframe warning
            m = jit.load({str(path)!r})
        x, y = torch.load({str(path) + '.x'!r}), torch.load({str(path) + '.y'!r})
        assert torch.equal(m(x), y)
        assert torch.equal(jit.to_device(m, "cpu")(x), y)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr


def test_load_warns_on_another_version(traced, tmp_path):
    _, script, _, _ = traced
    path = tmp_path / "old.pt"
    torch.jit.save(script, str(path), _extra_files={"qframe_version": "0.0.1"})
    with pytest.warns(UserWarning, match="saved with qframe 0.0.1"):
        jit.load(str(path))
    plain = tmp_path / "plain.pt"
    torch.jit.save(script, str(plain))
    with pytest.warns(UserWarning, match="not saved by qframe_core.jit.save"):
        jit.load(str(plain))


def test_load_fills_the_callers_extra_files(traced, tmp_path):
    """As torch.jit.load does: the caller's dict receives each asked-for extra file's contents."""
    _, script, _, x = traced
    path = tmp_path / "extra.pt"
    jit.save(script, str(path), _extra_files={"a.txt": "x"})
    extra = {"a.txt": "", "absent.txt": "old"}
    loaded = jit.load(str(path), _extra_files=extra)
    reference = {"a.txt": "", "absent.txt": "old"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 marks torch.jit deprecated
        torch.jit.load(str(path), _extra_files=reference)
    assert extra == reference == {"a.txt": b"x", "absent.txt": b""}  # the version key is not added
    assert torch.equal(loaded(x), script(x))
    # the version key can be asked for too
    extra = {"qframe_version": ""}
    jit.load(str(path), _extra_files=extra)
    assert extra == {"qframe_version": qframe_core.__version__.encode()}
