"""ConvTranspose2d, Conv3d and standalone BatchNorm: fusion, exact integer results, limits."""

import numpy as np
import pytest
import torch
from torch import nn

from qframe_core.errors import UnsupportedOpError
from qframe_core.nn import intrinsic
from qframe_core.nn import quantized as qnn
from qframe_core.quantization import (
    DeQuantStub,
    QuantStub,
    prepare_qat_fx,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as QCONFIG
from tests.kernels.reference import MARCH_RULES, finish
from tests.quant_helpers import calibrate_and_convert


# -- independent references (numpy int64, written as scatter / sum over kernel offsets) -------------
def conv_transpose2d_acc(x, w, stride, padding, output_padding, groups, dilation):
    """Exact accumulator of conv_transpose2d: every input pixel scatters its kernel into the output."""
    x, w = np.asarray(x, np.int64), np.asarray(w, np.int64)  # w: [I, O/g, kh, kw]
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    wo = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    full = np.zeros((n, og * groups, (h - 1) * sh + dh * (kh - 1) + 1 + oph, (wd - 1) * sw + dw * (kw - 1) + 1 + opw),
                    np.int64)
    cg = c // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        ws = w[g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", xs, ws[:, :, i, j])
                full[:, g * og:(g + 1) * og, i * dh: i * dh + sh * (h - 1) + 1: sh,
                     j * dw: j * dw + sw * (wd - 1) + 1: sw] += contrib
    return full[:, :, ph:ph + ho, pw:pw + wo]


def conv3d_acc(x, w, stride, padding):
    x, w = np.asarray(x, np.int64), np.asarray(w, np.int64)
    n, c, d, h, wd = x.shape
    o, _, kd, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2, (padding[2],) * 2))
    do, ho, wo = [(s + 2 * p - k) // st + 1 for s, p, k, st in zip((d, h, wd), padding, (kd, kh, kw), stride)]
    acc = np.zeros((n, o, do, ho, wo), np.int64)
    for a in range(kd):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, :, a:a + stride[0] * (do - 1) + 1:stride[0], i:i + stride[1] * (ho - 1) + 1:stride[1],
                           j:j + stride[2] * (wo - 1) + 1:stride[2]]
                acc += np.einsum("ncdhw,oc->nodhw", patch, w[:, :, a, i, j])
    return acc


class TConvNet(nn.Module):
    def __init__(self, groups=1, stride=2, padding=1, output_padding=1, add=False):
        super().__init__()
        self.quant, self.quant2, self.dequant = QuantStub(), QuantStub(), DeQuantStub()
        self.tconv = nn.ConvTranspose2d(4, 6, 3, stride=stride, padding=padding, output_padding=output_padding,
                                        groups=groups)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.add = add

    def forward(self, x, r=None):
        y = self.bn(self.tconv(self.quant(x)))
        if self.add:
            y = y + self.quant2(r)
        return self.dequant(self.relu(y))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv = nn.Conv3d(3, 5, (3, 3, 2), stride=2, padding=1)
        self.bn = nn.BatchNorm3d(5)
        self.relu6 = nn.ReLU6()
        self.bn_alone = nn.BatchNorm3d(5)

    def forward(self, x):
        return self.dequant(self.bn_alone(self.relu6(self.bn(self.conv(self.quant(x))))))


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("march", ["bernoulli2", "bayes"])
@pytest.mark.parametrize("groups,add", [(1, False), (2, True)])
def test_conv_transpose2d_fused_exact(march, groups, add):
    torch.manual_seed(groups)
    model = TConvNet(groups=groups, add=add).eval()
    _randomize_bn(model)
    inputs = [torch.randn(2, 4, 5, 7), torch.randn(2, 6, 10, 14)] if add else [torch.randn(2, 4, 5, 7)]
    qat, quantized = calibrate_and_convert(model, march, inputs)
    name = "_generated_add_0" if add else "tconv"
    fused = qat.get_submodule(name)
    assert type(fused).__name__ == "ConvTranspose2d" and fused.activation == "relu" and fused.has_add == add
    integer = quantized.get_submodule(name)
    assert type(integer) is qnn.ConvTranspose2d
    with torch.no_grad():
        torch.testing.assert_close(quantized(*inputs), qat(*inputs), atol=0, rtol=0)

    # the integer module against the numpy reference of the march's rules
    q = torch.randint(-128, 128, (2, 4, 5, 7), dtype=torch.int8)
    r = torch.randint(-128, 128, (2, 6, 10, 14), dtype=torch.int8) if add else None
    with torch.no_grad():
        out = integer(q, r) if add else integer(q)
    w = integer.weight.numpy().reshape(groups, 6 // groups, 4 // groups, 3, 3).transpose(0, 2, 1, 3, 4).reshape(4, 6 // groups, 3, 3)
    acc = conv_transpose2d_acc(q.numpy(), w, integer.stride, integer.padding, integer.output_padding, groups,
                               integer.dilation)
    ref = finish(acc, integer.bias.numpy(), integer.multiplier.numpy(), integer.shift.numpy(), "int8",
                 integer.clamp_min, integer.clamp_max, MARCH_RULES[march][1], 1,
                 None if r is None else r.numpy(),
                 None if r is None else integer.residual_multiplier.numpy())
    np.testing.assert_array_equal(out.numpy(), ref)
    if not add:  # the kernel-requantized path takes channels-last codes too
        with torch.no_grad():
            cl = integer(q.contiguous(memory_format=torch.channels_last))
        np.testing.assert_array_equal(cl.contiguous().numpy(), ref)


def test_conv3d_bn_relu6_and_standalone_bn3d_exact_on_bayes():
    torch.manual_seed(3)
    model = Conv3dNet().eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 6, 7, 5)
    qat, quantized = calibrate_and_convert(model, "bayes", [x])
    assert type(qat.conv).__name__ == "Conv3d" and qat.conv.activation == "relu6"
    assert type(quantized.conv) is qnn.Conv3d and type(quantized.bn_alone) is qnn.Conv3d  # BN as depthwise conv
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), qat(x), atol=0, rtol=0)
    q = torch.randint(-128, 128, (1, 3, 6, 7, 5), dtype=torch.int8)
    conv = quantized.conv
    with torch.no_grad():
        out = conv(q)
    acc = conv3d_acc(q.numpy(), conv.weight.numpy(), conv.stride, conv.padding)
    ref = finish(acc, conv.bias.numpy(), conv.multiplier.numpy(), conv.shift.numpy(), "int8", conv.clamp_min,
                 conv.clamp_max, MARCH_RULES["bayes"][1], 1)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_standalone_batchnorm2d_runs_as_depthwise_conv_on_bernoulli2():
    class BNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant, self.bn = QuantStub(), DeQuantStub(), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.dequant(self.bn(self.quant(x)))

    torch.manual_seed(0)
    model = BNNet().eval()
    _randomize_bn(model)
    x = torch.randn(2, 4, 5, 5)
    qat, quantized = calibrate_and_convert(model, "bernoulli2", [x])
    assert type(quantized.bn) is qnn.Conv2d and quantized.bn.groups == 4
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), qat(x), atol=0, rtol=0)
        # close to the float BN: within 2 output steps except where calibration clipped the range
        err = (qat(x) - model(x)).abs()
        lsb = quantized.bn.out_scale.item()
        assert (err <= 2 * lsb).float().mean() > 0.95


def test_fused_names():
    out = intrinsic.fuse_chain([nn.ConvTranspose2d(2, 3, 2).eval(), nn.BatchNorm2d(3).eval(), None, nn.ReLU()],
                               "relu", True)
    assert type(out) is intrinsic.ConvTransposeAddReLU2d
    assert type(intrinsic.fuse_chain([nn.Conv3d(2, 3, 1), None], "relu6", False)) is intrinsic.ConvReLU63d


def test_limits_and_unsupported():
    with pytest.raises(UnsupportedOpError, match=r"'tconv'.*stride=\(1, 1\) breaks 2<=stride<=4.*bernoulli2"):
        prepare_qat_fx(TConvNet(stride=1, padding=0, output_padding=0), {"": QCONFIG}, march="bernoulli2")
    with pytest.raises(UnsupportedOpError, match=r"Conv3d is not supported on bernoulli2"):
        prepare_qat_fx(Conv3dNet(), {"": QCONFIG}, march="bernoulli2")

    class Grouped3d(Conv3dNet):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(4, 6, 1, groups=2)
            self.bn, self.bn_alone = nn.BatchNorm3d(6), nn.BatchNorm3d(6)

    with pytest.raises(UnsupportedOpError, match=r"groups=2 breaks group: 暂不支持"):
        prepare_qat_fx(Grouped3d(), {"": QCONFIG}, march="bayes")


def _integer_tconv(rng, march, cin, cout, k, stride, padding, output_padding, groups, dilation, out_dtype, residual,
                   raw=False):
    """An integer ConvTranspose2d with random parameters (weight stored in conv2d's [O, I/g, kh, kw] layout)."""
    from qframe_core.dtype import qint8, qint16, qint32
    from qframe_core.nn.qat.weighted import WeightedIntParams
    from qframe_core.quantization.fake_quantize import QuantParams

    mbits = MARCH_RULES[march][0]
    w = torch.from_numpy(rng.integers(-128, 128, (cout, cin // groups, *k)))
    out_q = {"int8": qint8, "int16": qint16, "int32": qint32}[out_dtype]
    p = WeightedIntParams(
        QuantParams(torch.tensor([0.1]), qint8), w, torch.from_numpy(rng.integers(-5000, 5000, cout)),
        QuantParams(torch.tensor([0.1]), out_q),
        None if raw else torch.from_numpy(rng.integers(1, 2 ** (mbits - 1), cout)),
        None if raw else torch.from_numpy(rng.integers(12, 26, cout)),
        QuantParams(torch.tensor([0.1]), qint8) if residual else None,
        torch.from_numpy(rng.integers(1, 2 ** (mbits - 1), cout)) if residual else None, None, None)
    mod = qnn.ConvTranspose2d(p, march, "tconv")
    mod.stride, mod.padding, mod.output_padding, mod.groups, mod.dilation = \
        stride, padding, output_padding, groups, dilation
    return mod


@pytest.mark.parametrize("march", ["bernoulli2", "bayes"])
def test_conv_transpose2d_phases_match_the_reference(march):
    """The kernel path (one stride-1 conv per output phase) against the numpy scatter reference on random
    geometries: unequal strides up to 4, kernels smaller than the stride (phases with no tap: bias only),
    paddings and output paddings, groups, int16 inputs, residuals, raw int32 outputs, channels-last inputs; a
    dilated one takes the torch path."""
    rng = np.random.default_rng(5)
    cases = 0
    for i in range(40):
        groups = int(rng.choice([1, 1, 2, 3]))
        cin, cout = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        stride = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        padding = (int(rng.integers(0, k[0])), int(rng.integers(0, k[1])))
        output_padding = (int(rng.integers(0, stride[0])), int(rng.integers(0, stride[1])))
        dilation = (2, 1) if i % 13 == 12 else (1, 1)
        if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
            continue  # torch's rule: output_padding < max(stride, dilation)
        h, w = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        oh = (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (k[0] - 1) + output_padding[0] + 1
        ow = (w - 1) * stride[1] - 2 * padding[1] + dilation[1] * (k[1] - 1) + output_padding[1] + 1
        if oh < 1 or ow < 1:
            continue
        in_dtype = np.int16 if i % 4 == 3 else np.int8
        residual, raw = i % 3 == 1, i % 7 == 5 and i % 3 != 1
        out_dtype = "int32" if raw else ("int16" if i % 5 == 2 else "int8")
        mod = _integer_tconv(rng, march, cin, cout, k, stride, padding, output_padding, groups, dilation, out_dtype,
                             residual, raw)
        info = np.iinfo(in_dtype)
        q = torch.from_numpy(rng.integers(info.min, info.max, (2, cin, h, w), endpoint=True).astype(in_dtype))
        r = torch.from_numpy(rng.integers(-128, 128, (2, cout, oh, ow)).astype(np.int8)) if residual else None
        w_t = mod.weight.numpy().reshape(groups, cout // groups, cin // groups, *k).transpose(0, 2, 1, 3, 4) \
            .reshape(cin, cout // groups, *k)
        acc = conv_transpose2d_acc(q.numpy(), w_t, stride, padding, output_padding, groups, dilation)
        ref = finish(acc, mod.bias.numpy(), None if raw else mod.multiplier.numpy(),
                     None if raw else mod.shift.numpy(), out_dtype, None, None, MARCH_RULES[march][1], 1,
                     None if r is None else r.numpy(), None if r is None else mod.residual_multiplier.numpy())
        for x in (q, q.contiguous(memory_format=torch.channels_last)):
            with torch.no_grad():
                out = mod(x, r) if residual else mod(x)
            assert out.shape == (2, cout, oh, ow)
            np.testing.assert_array_equal(out.contiguous().numpy(), ref, err_msg=f"case {i}")
        cases += 1
    assert cases >= 25


def conv3d_acc_general(x, w, stride, padding, dilation, groups):
    """Exact conv3d accumulator with dilation and groups: a sum over kernel offsets of strided slices."""
    x, w = np.asarray(x, np.int64), np.asarray(w, np.int64)
    n, c, *size = x.shape
    o, cg, *k = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), *((p, p) for p in padding)))
    out = [(s + 2 * p - d * (kk - 1) - 1) // st + 1 for s, p, d, kk, st in zip(size, padding, dilation, k, stride)]
    acc = np.zeros((n, o, *out), np.int64)
    og = o // groups
    for g in range(groups):
        for a in range(k[0]):
            for i in range(k[1]):
                for j in range(k[2]):
                    sl = [slice(off * d, off * d + st * (m - 1) + 1, st)
                          for off, d, st, m in zip((a, i, j), dilation, stride, out)]
                    patch = xp[:, g * cg:(g + 1) * cg][(slice(None), slice(None), *sl)]
                    acc[:, g * og:(g + 1) * og] += np.einsum("ncdhw,oc->nodhw", patch,
                                                             w[g * og:(g + 1) * og, :, a, i, j])
    return acc


@pytest.mark.parametrize("march", ["bernoulli2", "bayes"])
def test_conv3d_depth_taps_match_the_reference(march):
    """The kernel path (a raw-int32 conv2d per kernel depth tap, summed, requantized) against the numpy
    reference on random geometries: strides, paddings (beyond the kernel's reach: depth taps that read no
    input), dilations, groups, int8/int16 inputs, int8/int16 outputs, channels-last-3d inputs."""
    from qframe_core.dtype import qint8, qint16
    from qframe_core.nn.qat.weighted import WeightedIntParams
    from qframe_core.quantization.fake_quantize import QuantParams

    rng = np.random.default_rng(9)
    mbits = MARCH_RULES[march][0]
    cases = 0
    for i in range(24):
        groups = int(rng.choice([1, 1, 2]))
        cin, cout = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        k = tuple(int(v) for v in rng.integers(1, 4, 3))
        stride = tuple(int(v) for v in rng.integers(1, 3, 3))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 3))
        padding = tuple(int(v) for v in rng.integers(0, 3, 3))
        size = tuple(int(v) for v in rng.integers(1, 7, 3))
        out = [(s + 2 * p - d * (kk - 1) - 1) // st + 1 for s, p, d, kk, st in zip(size, padding, dilation, k, stride)]
        if min(out) < 1:
            continue
        in_dtype, out_dtype = (np.int16 if i % 3 == 2 else np.int8), ("int16" if i % 4 == 1 else "int8")
        w = torch.from_numpy(rng.integers(-128, 128, (cout, cin // groups, *k)))
        p = WeightedIntParams(QuantParams(torch.tensor([0.1]), qint8), w,
                              torch.from_numpy(rng.integers(-5000, 5000, cout)),
                              QuantParams(torch.tensor([0.1]), qint16 if out_dtype == "int16" else qint8),
                              torch.from_numpy(rng.integers(1, 2 ** (mbits - 1), cout)),
                              torch.from_numpy(rng.integers(14, 30, cout)), None, None, None, None)
        mod = qnn.Conv3d(p, march, "conv3d")
        mod.stride, mod.padding, mod.dilation, mod.groups = stride, padding, dilation, groups
        info = np.iinfo(in_dtype)
        q = torch.from_numpy(rng.integers(info.min, info.max, (2, cin, *size), endpoint=True).astype(in_dtype))
        acc = conv3d_acc_general(q.numpy(), mod.weight.numpy(), stride, padding, dilation, groups)
        ref = finish(acc, mod.bias.numpy(), mod.multiplier.numpy(), mod.shift.numpy(), out_dtype, None, None,
                     MARCH_RULES[march][1], 1)
        for x in (q, q.contiguous(memory_format=torch.channels_last_3d)):
            with torch.no_grad():
                got = mod(x)
            np.testing.assert_array_equal(got.numpy(), ref, err_msg=f"case {i}")
        cases += 1
    assert cases >= 15
