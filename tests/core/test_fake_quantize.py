"""FakeQuantize states, straight-through gradients, fixed scales, qconfig factories."""

import pytest
import torch

from qframe_core.errors import NotInstalledError, QuantizationStateError
from qframe_core.quantization import FakeQuantize, FakeQuantState, get_default_qconfig, set_fake_quantize
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig


def test_states_follow_the_seeds_semantics():
    fq = FakeQuantize(observer="min_max", averaging_constant=1.0)
    x = torch.tensor([-1.0, 0.3, 0.99])
    fq.set_state(FakeQuantState.CALIBRATION)
    assert torch.equal(fq(x), x)  # observe only
    scale = fq.scale.item()
    assert scale == pytest.approx(1.0 / 127.5)
    fq.set_state(FakeQuantState.VALIDATION)
    y = fq(x * 10)  # frozen scale: saturates, does not observe
    assert fq.scale.item() == scale
    assert y.max().item() == pytest.approx(127 * scale)
    ref = torch.clamp(torch.round(x / scale), -128, 127) * scale
    assert torch.equal(fq(x), ref)
    fq.set_state(FakeQuantState.QAT)
    fq(x * 2)  # observes and quantizes
    assert fq.scale.item() == pytest.approx(2.0 / 127.5)


def test_straight_through_gradient_inside_the_range_only():
    fq = FakeQuantize(observer="min_max", scale=0.1)
    x = torch.tensor([0.05, 1.0, 20.0, -20.0], requires_grad=True)
    fq(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_validation_before_calibration_is_a_clear_error():
    fq = FakeQuantize(observer="min_max")
    fq.set_name("conv1.activation_post_process")
    fq.set_state(FakeQuantState.VALIDATION)
    with pytest.raises(QuantizationStateError, match="conv1.activation_post_process: this fake-quantize has no scale"):
        fq(torch.ones(2))


def test_fixed_scale_never_moves_and_rejects_nonsense():
    fq = FakeQuantize(observer="min_max", scale=1 / 128)
    fq(torch.tensor([100.0]))
    assert fq.scale.item() == 1 / 128
    with pytest.raises(ValueError, match="positive finite"):
        FakeQuantize(observer="min_max", scale=0.0)


def test_with_args_and_default_qconfig():
    factory = FakeQuantize.with_args(observer="min_max", dtype="qint16")
    assert "qint16" in repr(factory)
    assert factory().dtype.name == "qint16"
    qc = get_default_qconfig(weight_qkwargs={"averaging_constant": 1.0})
    w = qc.weight()
    assert w.ch_axis == 0 and w.activation_post_process.averaging_constant == 1.0
    assert get_default_qconfig(activation_fake_quant=None).activation is None
    with pytest.raises(ValueError, match="unknown fake_quant"):
        get_default_qconfig(activation_fake_quant="nope")
    with pytest.raises(NotInstalledError, match="observer 'kl2' is not installed"):
        get_default_qconfig(activation_observer="kl2").activation()


def test_set_fake_quantize_reaches_every_module():
    m = torch.nn.Sequential(default_qat_8bit_fake_quant_qconfig.activation(),
                            default_qat_8bit_fake_quant_qconfig.activation())
    set_fake_quantize(m, FakeQuantState.CALIBRATION)
    assert all(fq.state is FakeQuantState.CALIBRATION for fq in m)
