"""Table-lookup ops: bernoulli2's 256-entry table, bayes's segment table, against numpy references."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qframe_core.dtype import qint8, qint16
from qframe_core.errors import UnsupportedOpError
from qframe_core.lookup import DirectTable, SegmentTable
from qframe_core.march import march, resolve_march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    get_default_qconfig,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.fake_quantize import QuantParams
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8

Q16 = get_default_qconfig(activation_qkwargs={"dtype": "qint16"})


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.sig = nn.Sigmoid()
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.conv(self.quant(x))
        a = self.sig(x)
        b = torch.exp(x * a)
        c = F.silu(b).tanh()
        return self.dequant(c + a)


@pytest.mark.parametrize("m,qconfig", [("bernoulli2", Q8), ("bayes", Q8), ("bayes", Q16)], ids=["b2", "bayes8", "bayes16"])
def test_integer_model_equals_qat_validation(m, qconfig):
    torch.manual_seed(5)
    model = Activations().eval()
    x = torch.randn(2, 2, 6, 5)
    with march(m):
        q = prepare_qat_fx(copy.deepcopy(model), {"": qconfig})
    assert {"_generated_exp_0", "_generated_silu_0", "_generated_tanh_0"} <= set(dict(q.named_children()))
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    expected = q(x)
    got = convert_fx(q)(x)
    assert torch.equal(got, expected), (got - expected).abs().max()
    assert torch.nn.functional.cosine_similarity(got.flatten(), model(x).flatten(), dim=0) > 0.99


FUNCS = {"sigmoid": (torch.sigmoid, lambda v: 1 / (1 + np.exp(-v))), "tanh": (torch.tanh, np.tanh),
         "exp": (torch.exp, np.exp)}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_direct_table_is_the_rounded_function(name):
    torch_fn, np_fn = FUNCS[name]
    inp = QuantParams(torch.tensor([4.0 / 128]), qint8)
    out = QuantParams(torch.tensor([1.0 / 127 if name != "exp" else 54.6 / 127]), qint8)
    rule = resolve_march("bernoulli2")
    p = DirectTable(256).build(torch_fn, inp, out, "t")
    codes = torch.arange(-128, 128)
    got = DirectTable(256).apply(codes, p, rule.requant, out).numpy()
    want = np.clip(np.round(np_fn(codes.numpy() * (4.0 / 128)) / out.scale.item()), -128, 127)
    np.testing.assert_array_equal(got, want)


def test_direct_table_refuses_int16_inputs():
    with pytest.raises(ValueError, match="256-entry lookup table cannot index qint16"):
        DirectTable(256).build(torch.sigmoid, QuantParams(torch.tensor([1e-3]), qint16),
                               QuantParams(torch.tensor([1e-3]), qint8), "sig")


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "exp"])
def test_segment_table_int16_accuracy_against_numpy(name):
    torch_fn, np_fn = FUNCS[name]
    in_scale, out_scale = (12.0 / 32767, 1.0 / 32767) if name != "exp" else (8.0 / 32767, 2980.0 / 32767)
    inp, out = QuantParams(torch.tensor([in_scale]), qint16), QuantParams(torch.tensor([out_scale]), qint16)
    table = resolve_march("bayes").lookup
    assert isinstance(table, SegmentTable)
    p = table.build(torch_fn, inp, out, "t")
    assert len(p.base) <= table.max_segments
    assert p.q_lo > -32768  # dense region smaller than the input range: saturating tail(s)
    codes = torch.arange(-32768, 32768)
    got = table.apply(codes, p, resolve_march("bayes").requant, out).numpy().astype(np.float64)
    want = np.clip(np.round(np_fn(codes.numpy() * in_scale) / out_scale), -32768, 32767)
    err = np.abs(got - want)
    assert err.max() <= 1, err.max()
    assert err.mean() < 0.1


def test_segment_table_is_exact_per_code_for_int8():
    inp, out = QuantParams(torch.tensor([0.05]), qint8), QuantParams(torch.tensor([1 / 127]), qint8)
    table = SegmentTable(256, 16)
    p = table.build(torch.sigmoid, inp, out, "t")
    codes = torch.arange(-128, 128)
    got = table.apply(codes, p, resolve_march("bayes").requant, out).numpy()
    want = np.clip(np.round(1 / (1 + np.exp(-codes.numpy() * 0.05)) * 127), -128, 127)
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.98


def test_unsupported_function_on_bernoulli2_is_named():
    class Log(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(torch.log(self.quant(x)))

    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"'_generated_log_0' \(torch.log\).*不支持"):
        prepare_qat_fx(Log(), {"": Q8})
    with march("bayes"):
        prepare_qat_fx(Log(), {"": Q8})


@pytest.mark.parametrize("march_name", ["bayes", "bernoulli2"])
@pytest.mark.parametrize("in_dtype,out_dtype", [(qint8, qint8), (qint8, qint16), (qint16, qint16), (qint16, qint8)])
def test_integer_lookup_kernel_equals_the_rule_on_every_code(march_name, in_dtype, out_dtype):
    """The integer module reads a dense table (the march's rule evaluated on every code of the input dtype)
    through the march kernel: the same codes as the rule, for every input code, in both memory formats,
    and after pickling (the dense table is derived data)."""
    from qframe_core.nn.quantized.lookup import LookupTable

    spec = resolve_march(march_name)
    inp = QuantParams(torch.tensor([0.04 if in_dtype is qint8 else 0.0004]), in_dtype, None)
    out = QuantParams(torch.tensor([1 / out_dtype.quant_max]), out_dtype, None)
    if march_name == "bernoulli2" and in_dtype is qint16:
        with pytest.raises(ValueError, match="256-entry lookup table cannot index"):
            spec.lookup.build(torch.tanh, inp, out, "tanh")
        return
    table = spec.lookup.build(torch.tanh, inp, out, "tanh")
    mod = LookupTable(table, out, march_name, "tanh")
    codes = torch.arange(in_dtype.quant_min, in_dtype.quant_max + 1).to(in_dtype.torch_dtype)
    want = spec.lookup.apply(codes, table, spec.requant, out).to(out_dtype.torch_dtype)
    assert torch.equal(mod(codes), want)
    q = codes[torch.randint(0, len(codes), (2, 16, 5, 7))]
    want = spec.lookup.apply(q, table, spec.requant, out).to(out_dtype.torch_dtype)
    cl = mod(q.contiguous(memory_format=torch.channels_last))
    assert torch.equal(mod(q), want) and torch.equal(cl, want)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(copy.deepcopy(mod)(q), want)
    wide = q.to(torch.int32)  # other integer dtypes take the rule itself
    assert torch.equal(mod(wide), want)
