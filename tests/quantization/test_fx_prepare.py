"""fuse_fx / prepare_qat_fx: fusion structure, qconfig priority, QAT states, and every bad path."""

import copy

import pytest
import torch
from torch import nn

from qframe_core.errors import TraceError, UnsupportedOpError
from qframe_core.march import march
from qframe_core.nn import intrinsic, qat
from qframe_core.nn.quantized import FloatFunctional
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    fuse_fx,
    get_default_qconfig,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_calib_8bit_fake_quant_qconfig
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8
from qframe_core.quantization.qconfig import default_qat_8bit_weight_32bit_out_fake_quant_qconfig as Q32
from qframe_core.utils.fx_helper import fx_wrap


class ResBlock(nn.Module):
    def __init__(self, c=4, second=False):
        super().__init__()
        self.quant = QuantStub()
        self.conv0 = nn.Conv2d(c, c, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(c)
        self.relu0 = nn.ReLU()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.dequant = DeQuantStub()
        self.second = second

    def forward(self, x):
        x = self.quant(x)
        y = self.relu0(self.bn0(self.conv0(x)))
        z = self.bn(self.conv(y))
        z = self.relu((y + z) if self.second else torch.add(z, y))
        return self.dequant(z)


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
@pytest.mark.parametrize("second", [False, True], ids=["conv-first-operand", "conv-second-operand"])
def test_fuse_conv_bn_add_relu(m, second):
    model = _randomize_bn(ResBlock(second=second))
    x = torch.randn(2, 4, 6, 6)
    ref = model(x)
    fused = fuse_fx(copy.deepcopy(model), march=m)
    assert type(fused.conv0) is intrinsic.ConvReLU2d
    # as the seeds print: the fused module takes the add's generated name, absorbed modules become Identity
    assert type(fused._generated_add_0) is intrinsic.ConvAddReLU2d
    assert all(isinstance(getattr(fused, n), nn.Identity) for n in ("conv", "bn", "relu", "bn0", "relu0"))
    calls = [n.target for n in fused.graph.nodes if n.op == "call_module"]
    assert calls == ["quant", "conv0", "_generated_add_0", "dequant"]
    torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)


def test_prepare_swaps_modules_and_generates_add_modules():
    class AddNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.a = nn.Conv2d(2, 2, 1)
            self.b = nn.Conv2d(2, 2, 1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            return self.dequant(self.a(x) + self.b(x) + x)

    with march("bayes"):
        q = prepare_qat_fx(AddNet(), {"": Q8})
    assert type(q._generated_add_0) is qat.Conv2d and q._generated_add_0.has_add  # first add fused with conv a
    assert isinstance(q._generated_add_1, qat.FloatFunctional)  # the second add stays an add
    assert q._generated_add_0.activation_post_process.qframe_name == "_generated_add_0.activation_post_process"
    assert q.meta["qframe_march"] == "bayes"


def test_qconfig_priority_global_type_name_own():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.c1 = nn.Conv2d(1, 1, 1)
            self.c2 = nn.Conv2d(1, 1, 1)
            self.c3 = nn.Conv2d(1, 1, 1)
            self.c4 = nn.Conv2d(1, 1, 1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.c4(self.c3(self.c2(self.c1(self.quant(x))))))

    q16 = get_default_qconfig(activation_qkwargs={"dtype": "qint16"})
    q_type = get_default_qconfig(activation_qkwargs={"averaging_constant": 0.5})
    net = Net()
    net.c4.qconfig = Q32
    with march("bayes"):
        q = prepare_qat_fx(net, {"": Q8, "module_type": [(nn.Conv2d, q_type)],
                                 "module_name": [("c2", q16), ("c4", q16)]})
    assert q.c1.activation_post_process.activation_post_process.averaging_constant == 0.5  # module_type
    assert q.c2.activation_post_process.dtype.name == "qint16"  # module_name beats module_type
    assert q.c3.activation_post_process.activation_post_process.averaging_constant == 0.5
    assert q.c4.activation_post_process is None  # own .qconfig beats module_name
    assert q.quant.activation_post_process.dtype.name == "qint8"  # global


def test_states_calibration_qat_validation_on_a_prepared_model():
    torch.manual_seed(0)
    with march("bayes"):
        q = prepare_qat_fx(_randomize_bn(ResBlock()), {"": Q8})
    x = torch.randn(4, 4, 6, 6)
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    float_out = q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    val = q(x)
    scale = q._generated_add_0.activation_post_process.scale
    # VALIDATION output lies on the output grid and stays close to float
    assert torch.equal(torch.round(val / scale) * scale, val)
    assert (val - float_out).abs().max() < 4 * scale
    q.train()
    set_fake_quantize(q, FakeQuantState.QAT)
    out = q(x)
    out.sum().backward()
    assert q._generated_add_0.weight.grad is not None and q.conv0.weight.grad.abs().sum() > 0


# -- bad input ------------------------------------------------------------------------------
class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        x = self.quant(x)
        if x.sum() > 0:
            x = self.conv(x)
        return x


def test_untraceable_model_names_the_line_and_fx_wrap():
    with march("bayes"), pytest.raises(TraceError) as info:
        prepare_qat_fx(Untraceable(), {"": Q8})
    msg = str(info.value)
    assert "test_fx_prepare.py" in msg and "if x.sum() > 0" in msg and "fx_wrap" in msg


def test_fx_wrap_makes_it_traceable_and_keeps_control_flow():
    @fx_wrap()
    def maybe_negate(t):
        return -t if t.sum() < 0 else t

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.conv = nn.Conv2d(1, 1, 1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return maybe_negate(self.dequant(self.conv(self.quant(x))))

    with march("bayes"):
        q = prepare_qat_fx(Wrapped(), {"": Q8})
    assert any(n.op == "call_function" and n.target.__name__ == "maybe_negate" for n in q.graph.nodes)
    q(torch.randn(1, 1, 2, 2))


class LinearNet(nn.Module):
    def __init__(self, k=4):
        super().__init__()
        self.quant = QuantStub()
        self.fc = nn.Linear(k, 3)
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc(self.quant(x)))


def test_unsupported_op_names_module_march_rule_and_way_out():
    with march("bernoulli2"), pytest.raises(UnsupportedOpError) as info:
        prepare_qat_fx(LinearNet(), {"": Q8})
    msg = str(info.value)
    assert "march 'bernoulli2'" in msg and "'fc' (torch.nn.Linear)" in msg
    assert "不支持" in msg and "1x1 Conv2d" in msg
    with march("bayes"):
        prepare_qat_fx(LinearNet(), {"": Q8})  # fine on bayes


def test_limit_violation_names_the_rule():
    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.conv = nn.Conv2d(1, 1, 33)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.conv(self.quant(x)))

    with march("bayes"), pytest.raises(UnsupportedOpError, match=r"'conv'.*kernel_size=\(33, 33\) breaks kernel<32"):
        prepare_qat_fx(Big(), {"": Q8})


def test_op_outside_the_table_and_dtype_rules():
    class Sig(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(torch.cumsum(self.quant(x), 1))

    with march("bayes"), pytest.raises(UnsupportedOpError, match=r"torch.cumsum is not in march 'bayes'"):
        prepare_qat_fx(Sig(), {"": Q8})
    q16 = get_default_qconfig(activation_qkwargs={"dtype": "qint16"})
    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"output dtype qint16 is not supported on march 'bernoulli2'"):
        prepare_qat_fx(ResBlock(), {"": q16})


def test_int32_output_may_only_feed_a_dequant():
    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.c1 = nn.Conv2d(1, 1, 1)
            self.c2 = nn.Conv2d(1, 1, 1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.c2(self.c1(self.quant(x))))

    with march("bayes"), pytest.raises(UnsupportedOpError, match=r"'c2'.*input 0.*qint32"):
        prepare_qat_fx(Chain(), {"": Q8, "module_name": {"c1": Q32}})


def test_mixing_calibration_and_qat_qconfigs_is_refused():
    with march("bayes"), pytest.raises(ValueError, match="mixes calibration and QAT"):
        prepare_qat_fx(ResBlock(), {"": Q8, "module_name": {"conv": default_calib_8bit_fake_quant_qconfig}})


class SharedOps(nn.Module):
    """One FloatFunctional called twice and one conv called at two inputs of different ranges."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.ff = FloatFunctional()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.dequant = DeQuantStub()

        self.scale_up = FloatFunctional()

    def forward(self, x):
        x = self.quant(x)
        y = self.ff.add(self.ff.add(x, x), x)  # a range three times x's
        return self.dequant(self.scale_up.add(self.conv(x), self.conv(y)))


def test_shared_modules_get_one_qat_module_per_call_with_tied_parameters():
    from qframe_core.errors import SharedModuleWarning
    from tests.quant_helpers import calibrate_and_convert

    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(SharedModuleWarning, match=r"'ff' is called 2 times.*'ff', 'ff_1'") as record:
        qat_model, quantized = calibrate_and_convert(SharedOps(), "bayes", [x])
    assert any("'conv' is called 2 times" in str(w.message) for w in record)
    assert isinstance(qat_model.conv, qat.Conv2d) and isinstance(qat_model.conv_1, qat.Conv2d)
    assert qat_model.conv_1.weight is qat_model.conv.weight and qat_model.conv_1.bias is qat_model.conv.bias
    # each call site has its own activation quantization: the second conv sees a 3x wider input
    in_scales = [m.input_params(0).scale.item() for m in (qat_model.conv, qat_model.conv_1)]
    assert in_scales[1] > 2 * in_scales[0]
    assert qat_model.conv_1.activation_post_process is not qat_model.conv.activation_post_process
    # QAT-validation predicts the integer model (<= 1 LSB) at both call sites
    with torch.no_grad():
        expected = qat_model(x)
        got = quantized(x)
    lsb = qat_model.scale_up.activation_post_process.scale.item()
    assert (expected - got).abs().max().item() <= lsb * 1.0001
    # training updates the one shared weight
    qat_model.train()
    set_fake_quantize(qat_model, FakeQuantState.QAT)
    opt = torch.optim.SGD(qat_model.parameters(), lr=0.1)
    before = qat_model.conv.weight.detach().clone()
    qat_model(x).sum().backward()
    opt.step()
    assert not torch.equal(before, qat_model.conv_1.weight.detach())
    assert qat_model.conv_1.weight is qat_model.conv.weight


def test_no_march_and_unknown_march():
    import qframe_core.march as march_mod
    from qframe_core.errors import MarchNotSetError, NotInstalledError

    march_mod._GLOBAL = None
    with pytest.raises(MarchNotSetError):
        prepare_qat_fx(ResBlock(), {"": Q8})
    with pytest.raises(NotInstalledError, match="bayes2"):
        prepare_qat_fx(ResBlock(), {"": Q8}, march="bayes2")


def test_nan_calibration_data_warns_with_the_module_name_and_keeps_scales_finite():
    with march("bayes"):
        q = prepare_qat_fx(_randomize_bn(ResBlock()), {"": Q8})
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    x = torch.randn(2, 4, 6, 6)
    q(x)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    bad[1, 1, 1, 1] = float("inf")
    with pytest.warns(RuntimeWarning, match=r"quant.activation_post_process: \d+ NaN/Inf"):
        q(bad)
    for name, m in q.named_modules():
        if name.endswith("activation_post_process") and hasattr(m, "scale"):
            assert torch.isfinite(m.scale).all() and (m.scale > 0).all(), name


def test_load_observer_params_copies_calibration_into_a_qat_model():
    from qframe_core.quantization import load_observer_params

    x = torch.randn(2, 4, 6, 6)
    with march("bayes"):
        calib = prepare_qat_fx(_randomize_bn(ResBlock()), {"": default_calib_8bit_fake_quant_qconfig})
        fresh = prepare_qat_fx(_randomize_bn(ResBlock()), {"": default_calib_8bit_fake_quant_qconfig})
    set_fake_quantize(calib, FakeQuantState.CALIBRATION)
    calib(x)
    load_observer_params(calib, fresh)
    set_fake_quantize(calib, FakeQuantState.VALIDATION)
    set_fake_quantize(fresh, FakeQuantState.VALIDATION)
    assert torch.equal(fresh._generated_add_0.activation_post_process.scale, calib._generated_add_0.activation_post_process.scale)
    assert bool(fresh.quant.activation_post_process.calibrated)
