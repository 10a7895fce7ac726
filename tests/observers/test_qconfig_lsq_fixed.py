"""Observers by name through get_default_qconfig, fixed scales, and LSQ (against the paper's reference code)."""

import copy
import math

import pytest
import torch

from qframe_core.dtype import qint16
from qframe_core.quantization import (
    FakeQuantize,
    FakeQuantState,
    convert_fx,
    load_observer_params,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.fake_quantize import fake_quantize
from qframe_core.quantization.lsq import LSQFakeQuantize
from qframe_core.quantization.observer import FixedScaleObserver
from qframe_core.quantization.qconfig import (
    default_qat_8bit_lsq_quant_qconfig,
    get_default_calib_qconfig,
    get_default_qat_qconfig,
    get_default_qconfig,
)
from qframe_core.quickstart import DigitsNet
from qframe_core.registry import registry
from qframe_observers import (
    KLObserver,
    MinMaxObserver,
    MixObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)


def test_every_observer_is_registered_by_name():
    expected = {"min_max": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver,
                "kl": KLObserver, "mix": MixObserver, "fixed_scale": FixedScaleObserver}
    for name, cls in expected.items():
        assert registry.observer(name) is cls
        assert registry.distribution_of("observer", name) == "qframe-observers"


def test_seed_signatures_and_defaults():
    assert PercentileObserver().percentile == 99.99 and PercentileObserver().bins == 2048
    assert MSEObserver().stride == 1
    kl = KLObserver()
    assert kl.bins == 512 and kl.update_interval == 1
    ma = MovingAverageMinMaxObserver()
    assert not ma.per_channel and ma.averaging_constant == 0.01
    pc = MovingAveragePerChannelMinMaxObserver()
    assert pc.per_channel and pc.ch_axis == 0
    w = torch.randn(3, 4)
    pc(w)
    torch.testing.assert_close(pc.calculate_qparams()[0], w.abs().amax(1) / 127.5)
    # positional order of the seeds
    assert PercentileObserver(99.9, 1024).bins == 1024 and KLObserver(256, 4).update_interval == 4


def _calibrate_digits(qconfig, march="bayes", steps=3):
    torch.manual_seed(0)
    model = prepare_qat_fx(DigitsNet().eval(), {"": qconfig}, march=march)
    model.eval()
    set_fake_quantize(model, FakeQuantState.CALIBRATION)
    data = [torch.rand(16, 1, 8, 8) * 2 - 1 for _ in range(steps)]
    with torch.no_grad():
        for x in data:
            model(x)
    set_fake_quantize(model, FakeQuantState.VALIDATION)
    return model, data


@pytest.mark.parametrize("name", ["min_max", "percentile", "mse", "kl", "mix"])
def test_each_observer_calibrates_validates_and_converts_the_digits_cnn(name):
    qconfig = get_default_calib_qconfig(activation_observer=name, weight_observer=name)
    model, data = _calibrate_digits(qconfig)
    fqs = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    assert fqs and all(type(m.activation_post_process) is registry.observer(name)
                       for m in fqs if not m.fixed_scale)
    with torch.no_grad():
        qat_out = model(data[0])
        int_out = convert_fx(model)(data[0])
    assert torch.isfinite(qat_out).all()
    # the integer model reproduces the VALIDATION-state model (1 LSB of the int32 output at most)
    assert (qat_out - int_out).abs().max().item() <= 1e-3 + 1e-3 * qat_out.abs().max().item()


def test_fixed_scale_as_the_seeds_write_it():
    qconfig = get_default_qconfig(activation_qkwargs={"observer": FixedScaleObserver, "scale": 1 / 2 ** 15,
                                                      "dtype": qint16})
    fq = qconfig.activation()
    assert fq.fixed_scale and bool(fq.calibrated) and fq.dtype is qint16
    assert fq.quant_params().scale.item() == 2 ** -15
    fq.set_state(FakeQuantState.VALIDATION)  # usable without calibration
    x = torch.tensor([0.5, -1.2, 0.00001])
    torch.testing.assert_close(fq(x), torch.clamp(torch.round(x * 2 ** 15), -32768, 32767) / 2 ** 15)


def test_fixed_scale_by_name_and_alone():
    fq = get_default_qconfig(activation_observer="fixed_scale", activation_qkwargs={"scale": 0.25}).activation()
    assert fq.quant_params().scale.item() == 0.25
    obs = FixedScaleObserver(scale=0.125, dtype="qint16")
    obs(torch.randn(4))
    assert obs.calculate_qparams()[0].item() == 0.125 and obs.has_data()


# -- LSQ ---------------------------------------------------------------------------------
def _lsq_reference(x, s, qmin, qmax):
    """The LSQ paper's reference code (Esser et al. 2019, appendix): grad_scale and round_pass."""
    g = 1.0 / math.sqrt(x.numel() * qmax)
    s = (s - s * g).detach() + s * g
    v = torch.clamp(x / s, qmin, qmax)
    v = (v.round() - v).detach() + v
    return v * s


def test_lsq_forward_and_gradients_match_the_paper():
    torch.manual_seed(0)
    x0 = torch.randn(64) * 2
    s0 = torch.tensor([0.02])
    fq = LSQFakeQuantize(observer="min_max")
    fq.scale.data = s0.clone()
    fq.calibrated.fill_(True)
    x = x0.clone().requires_grad_()
    out = fq(x)
    torch.testing.assert_close(out, fake_quantize(x0, s0, -128, 127))  # same values as FakeQuantize
    (out * torch.arange(64.0)).sum().backward()

    xr, sr = x0.clone().requires_grad_(), s0.clone().requires_grad_()
    (_lsq_reference(xr, sr, -128, 127) * torch.arange(64.0)).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(fq.scale.grad, sr.grad)
    assert fq.scale.grad.abs().item() > 0


def test_lsq_per_channel_gradient_matches_per_channel_reference():
    torch.manual_seed(1)
    w = torch.randn(3, 5) * torch.tensor([[0.1], [1.0], [3.0]])
    fq = LSQFakeQuantize(observer="min_max", qscheme=torch.per_channel_symmetric, ch_axis=0)
    fq(w)  # QAT, not calibrated: the first batch sets the scale from the observer
    torch.testing.assert_close(fq.scale.detach(), w.abs().amax(1) / 127.5)
    fq.scale.data = fq.scale.data * 0.5  # so some weights clip
    wq = w.clone().requires_grad_()
    fq(wq).pow(2).sum().backward()
    for c in range(3):
        sr = fq.scale.detach()[c].clone().requires_grad_()
        _lsq_reference(w[c].clone(), sr, -128, 127).pow(2).sum().backward()
        torch.testing.assert_close(fq.scale.grad[c], sr.grad)


def test_lsq_qat_trains_the_scale_then_validates_and_converts():
    qconfig = default_qat_8bit_lsq_quant_qconfig
    assert get_default_qat_qconfig(activation_fake_quant="lsq", weight_fake_quant="lsq") == qconfig
    calib, data = _calibrate_digits(get_default_calib_qconfig(), steps=2)
    torch.manual_seed(0)
    qat = prepare_qat_fx(DigitsNet(), {"": qconfig}, march="bayes")
    float_state = {k: v for k, v in calib.state_dict().items()}
    qat.load_state_dict(float_state, strict=False)
    load_observer_params(calib, qat)
    lsq = [m for m in qat.modules() if isinstance(m, LSQFakeQuantize) and not m.fixed_scale]
    assert lsq and all(bool(m.calibrated) for m in lsq)
    before = [m.scale.detach().clone() for m in lsq]
    params = list(qat.parameters())
    assert all(any(m.scale is p for p in params) for m in lsq)  # the optimizer sees the scales
    opt = torch.optim.SGD(params, lr=0.05)
    qat.train()
    set_fake_quantize(qat, FakeQuantState.QAT)
    for x in data:
        opt.zero_grad()
        qat(x).logsumexp(1).mean().backward()
        opt.step()
    assert any(not torch.equal(b, m.scale.detach()) for b, m in zip(before, lsq))
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    with torch.no_grad():
        qat_out = qat(data[0])
        int_out = convert_fx(copy.deepcopy(qat))(data[0])
    assert (qat_out - int_out).abs().max().item() <= 1e-3 + 1e-3 * qat_out.abs().max().item()


def test_lsq_bad_states_are_clear():
    fq = LSQFakeQuantize(observer="min_max")
    fq.set_name("conv1.activation_post_process")
    fq.set_state(FakeQuantState.VALIDATION)
    with pytest.raises(Exception, match="conv1.activation_post_process: this LSQ fake-quantize has no scale yet"):
        fq(torch.ones(3))
    fq.scale.data = torch.tensor([-0.5])  # an optimizer pushed it negative: the magnitude is used
    fq.calibrated.fill_(True)
    assert fq.quant_params().scale.item() == 0.5
