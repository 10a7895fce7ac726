"""convert_fx's layout pass: integer activations stay channels-last between the ops that accept them.

Whatever the layouts, the integer model computes the same numbers: every test compares against the
same model with channels-last outputs switched off (NCHW everywhere), bit for bit.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

from qframe_core.nn.quantized import kernels
from qframe_core.nn.quantized.weighted import Conv2d as IntConv2d
from qframe_core.quantization import DeQuantStub, QuantStub
from tests.quant_helpers import calibrate_and_convert

MARCHES = ["bernoulli2", "bayes"]


class Mixed(nn.Module):
    """conv chains (channels-last), a conv feeding max_pool2d (torch's int8 channels-last max pool fails),
    a residual add, a ``view`` of a conv output and a float linear after the DeQuantStub."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        a = self.relu1(self.conv1(x))
        b = self.conv2(a) + a
        c = self.pool(self.conv3(b))
        d = self.conv4(c)
        e = self.dequant(d.view(d.shape[0], 16, 2, 4))  # view needs compatible strides: no channels-last here
        return self.fc(e.flatten(1))


def _nchw_everywhere(model):
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, IntConv2d):
            m.channels_last_output = False
    return model


def _conv_flags(model):
    return {name: m.channels_last_output for name, m in model.named_modules() if isinstance(m, IntConv2d)}


@pytest.mark.parametrize("march", MARCHES)
def test_layout_pass_enables_channels_last_only_where_every_consumer_accepts_it(march):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    _, quantized = calibrate_and_convert(Mixed().eval(), march, [x])
    flags = _conv_flags(quantized)
    # conv1 feeds conv2 and the fused add (both accept); conv2+add feeds conv3; conv3 feeds max_pool2d;
    # conv4 feeds a view
    fused = [n for n in flags if n not in ("conv1", "conv2", "conv3", "conv4")]
    assert flags["conv1"] is True and flags["conv3"] is False and flags["conv4"] is False
    assert len(fused) == 1 and flags[fused[0]] is True, flags

    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
             for name, m in quantized.named_modules() if isinstance(m, IntConv2d)]
    with torch.no_grad():
        got = quantized(x)
    for h in hooks:
        h.remove()
    native = quantized.conv1.packed_weight().native_layout("int8")
    assert kernels.is_channels_last(seen["conv1"]) == (native == "nhwc")
    assert seen["conv3"].is_contiguous() and seen["conv4"].is_contiguous()
    assert got.is_contiguous()  # the DeQuantStub hands back NCHW
    with torch.no_grad():
        want = _nchw_everywhere(quantized)(x)
    assert torch.equal(got, want)


@pytest.mark.parametrize("march", MARCHES)
def test_channels_last_model_traces_and_takes_channels_last_input(march):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    _, quantized = calibrate_and_convert(Mixed().eval(), march, [x])
    with torch.no_grad():
        want = _nchw_everywhere(quantized)(x)
        assert torch.equal(quantized(x.contiguous(memory_format=torch.channels_last)), want)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(quantized, x)
        assert torch.equal(traced(torch.randn(2, 3, 8, 8) * 0 + x), want)
        y = torch.randn(2, 3, 8, 8)
        assert torch.equal(traced(y), _nchw_everywhere(quantized)(y))


def test_nhwc_view_is_a_zero_copy_view_of_channels_last_integer_tensors_only():
    x = torch.randint(-128, 128, (2, 8, 5, 6), dtype=torch.int8)
    cl = x.contiguous(memory_format=torch.channels_last)
    a = kernels.nhwc_view(cl)
    assert a.shape == (2, 5, 6, 8) and a.flags.c_contiguous
    assert a.ctypes.data == cl.data_ptr() and (a == x.permute(0, 2, 3, 1).numpy()).all()
    # NCHW tensors, float tensors, non-4-D tensors and tensors that are NCHW too (C == 1) are not viewed
    for t in (x, cl.float(), x[0], torch.randint(-128, 128, (2, 1, 5, 6), dtype=torch.int8)
              .contiguous(memory_format=torch.channels_last)):
        assert kernels.nhwc_view(t) is None
    # ... and as_layout_array still gives them in NHWC (a copy)
    assert (kernels.as_layout_array(x, "nhwc", "input", "m") == a).all()
    back = kernels.from_layout_array(a, "nhwc")
    assert torch.equal(back, x) and back.is_contiguous(memory_format=torch.channels_last)


def test_quant_stub_output_is_nchw_for_channels_last_input():
    from qframe_core.dtype import qint8
    from qframe_core.nn.quantized.stubs import Quantize
    from qframe_core.quantization.fake_quantize import QuantParams

    stub = Quantize(QuantParams(torch.tensor([0.05]), qint8, None))
    x = torch.randn(2, 4, 5, 6)
    out = stub(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous() and torch.equal(out, stub(x))


def test_eager_convert_keeps_nchw_outputs():
    from qframe_core.march import march as march_scope
    from qframe_core.quantization import FakeQuantState, convert, prepare_qat, set_fake_quantize
    from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.conv2(self.conv1(self.quant(x))))

    model = Chain()
    model.qconfig = default_qat_8bit_fake_quant_qconfig
    with march_scope("bayes"):
        qat_model = prepare_qat(model)
        set_fake_quantize(qat_model, FakeQuantState.CALIBRATION)
        with torch.no_grad():
            qat_model(torch.randn(2, 3, 6, 6))
        set_fake_quantize(qat_model, FakeQuantState.VALIDATION)
        quantized = convert(qat_model.eval())
    assert _conv_flags(quantized) == {"conv1": False, "conv2": False}


@pytest.mark.parametrize("march", MARCHES)
def test_quant_stub_kernel_equals_the_torch_rule_and_feeds_the_stem_channels_last(march):
    from qframe_core.nn.quantized.stubs import Quantize

    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8)
    _, quantized = calibrate_and_convert(Mixed().eval(), march, [x])
    stub = quantized.quant
    assert isinstance(stub, Quantize) and stub.march == march
    assert stub.channels_last_output is True  # its one consumer, conv1, reads channels-last input
    y = x * 3
    y[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    torch_rule = Quantize(stub.output_params())  # no march: the torch ops of quantize_to_int
    got = stub(y)
    assert torch.equal(got, torch_rule(y))
    assert kernels.is_channels_last(got)  # written NHWC by the kernel, whatever the conv's native layout
    stub.channels_last_output = False
    assert got.contiguous().equal(stub(y)) and stub(y).is_contiguous()


@pytest.mark.parametrize("march", MARCHES)
def test_dequant_stub_kernel_equals_the_torch_rule(march):
    from qframe_core.nn.qat.base import integer_tensor_to_float
    from qframe_core.quantization.fake_quantize import QuantParams

    torch.manual_seed(4)
    x = torch.randn(2, 3, 8, 8)
    _, quantized = calibrate_and_convert(Mixed().eval(), march, [x])
    stub = quantized.dequant
    assert stub.march == march
    q = torch.randint(-128, 128, (2, 8, 4, 4), dtype=torch.int8)
    want = integer_tensor_to_float(q, QuantParams(stub.scale, stub.dtype, stub.ch_axis))
    for t in (q, q.contiguous(memory_format=torch.channels_last)):
        got = stub(t)
        assert got.is_contiguous() and torch.equal(got, want)
