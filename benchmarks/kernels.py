"""Kernel and whole-model speed of qframe's integer kernels vs torch, in one run.

    python benchmarks/kernels.py [--march bayes] [--repeat 30] [--quick]

Prints, for each op row, GOP/s (2 * multiply-accumulates / time) of
* qframe: the march's ``_kernels`` extension with weights packed once
  (``pack_conv2d_weight`` / ``pack_linear_weight``), int8 in, int8 out,
  per-channel requantization (what a converted model runs);
* torch fp32: ``torch.nn.functional.conv2d`` / ``linear``;
* torch fbgemm: ``torch.ao.nn.quantized.Conv2d`` / ``Linear`` (quint8
  activations, per-channel qint8 weights, prepacked once) on the fbgemm engine;
and the ratios qframe / torch.  Then whole-model images/s of the quantized
digits CNN, a ResNet-18-shaped network (1x3x224x224) and a MobileNetV2-shaped
one (8x3x32x32): qframe integer model vs the float model vs torch.ao's own
int8 model (x86 engine) of the same net.

Timing: the candidates of a row are called in interleaved rounds (one call
each per round, ``--repeat`` rounds after warm-up), so load from other
processes on a shared machine hits them alike; the table uses the best round
of each (ratios of medians in parentheses; raw medians/minimums with ``-v``).
Both libraries use the same threads: torch's intra-op pool and qframe's OpenMP
(``OMP_NUM_THREADS``); the header prints both and the selected kernel path.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import warnings

import numpy as np
import torch
from blocks import BasicBlock, MobileNetV2Shaped, UNetShaped  # benchmarks/blocks.py: the scripts run from this folder
from timing import time_interleaved
from torch import nn


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------- op rows

OPS = [
    # name, N, C, H, W, O, k, stride, pad, groups
    ("conv 3x3 64->64 1x64x56x56", 1, 64, 56, 56, 64, 3, 1, 1, 1),
    ("depthwise 3x3 1x144x56x56", 1, 144, 56, 56, 144, 3, 1, 1, 144),
    ("pointwise 1x1 96->576 1x96x28x28", 1, 96, 28, 28, 576, 1, 1, 0, 1),
]
LINEAR = ("linear M=256 K=1024 N=1024", 256, 1024, 1024)


def _requant_params(k, o: int, rng) -> tuple[np.ndarray, np.ndarray]:
    bits = k.MULTIPLIER_BITS
    mult = rng.integers(2 ** (bits - 2), 2 ** (bits - 1) - 1, size=o).astype(np.int32)
    shift = np.full(o, bits - 2 + 10, np.int32)  # keeps outputs spread over int8
    return mult, shift


def bench_ops(k, repeat: int, verbose: bool) -> list[tuple]:
    import torch.ao.nn.quantized as nnq

    rng = np.random.default_rng(0)
    rows = []
    torch.backends.quantized.engine = "fbgemm"
    for name, n, c, h, w, o, ks, st, pd, g in OPS:
        x8 = rng.integers(-128, 128, size=(n, c, h, w)).astype(np.int8)
        w8 = rng.integers(-128, 128, size=(o, c // g, ks, ks)).astype(np.int8)
        bias = rng.integers(-(2**16), 2**16, size=o).astype(np.int32)
        mult, shift = _requant_params(k, o, rng)
        packed = k.pack_conv2d_weight(w8, g)
        ho = (h + 2 * pd - ks) // st + 1
        macs = n * o * ho * ho * (c // g) * ks * ks

        # each library in its native activation layout (what its models pass between convs): qframe's
        # channels-last kernel reads and writes NHWC, its other kernels NCHW; fbgemm takes channels-last
        layout = packed.native_layout("int8")
        xq8 = np.ascontiguousarray(x8.transpose(0, 2, 3, 1)) if layout == "nhwc" else x8

        def qf(x8=xq8, packed=packed, bias=bias, st=st, pd=pd, g=g, mult=mult, shift=shift, layout=layout):
            return k.conv2d(x8, packed, bias, (st, st), (pd, pd), (1, 1), g, mult, shift, "int8", None, None,
                            input_layout=layout, output_layout=layout)

        xf = torch.from_numpy(x8.astype(np.float32))
        wf = torch.from_numpy(w8.astype(np.float32))
        bf = torch.from_numpy(bias.astype(np.float32))

        def tf(xf=xf, wf=wf, bf=bf, st=st, pd=pd, g=g):
            return torch.nn.functional.conv2d(xf, wf, bf, st, pd, 1, g)

        qconv = nnq.Conv2d(c, o, ks, stride=st, padding=pd, groups=g)
        wq = torch.quantize_per_channel(wf * 0.01, torch.full((o,), 0.01, dtype=torch.double),
                                        torch.zeros(o, dtype=torch.long), 0, torch.qint8)
        qconv.set_weight_bias(wq, bf * 0.0001)
        qconv.scale, qconv.zero_point = 0.5, 128
        xq = torch.quantize_per_tensor(xf * 0.01 + 1.28, 0.01, 0, torch.quint8).contiguous(
            memory_format=torch.channels_last)

        def tq(qconv=qconv, xq=xq):
            return qconv(xq)

        rows.append(_row(name, macs, qf, tf, tq, repeat, verbose))

    name, m, kk, nn_ = LINEAR
    x8 = rng.integers(-128, 128, size=(m, kk)).astype(np.int8)
    w8 = rng.integers(-128, 128, size=(nn_, kk)).astype(np.int8)
    bias = rng.integers(-(2**16), 2**16, size=nn_).astype(np.int32)
    mult, shift = _requant_params(k, nn_, rng)
    packed = k.pack_linear_weight(w8)

    def qf():
        return k.linear(x8, packed, bias, mult, shift, "int8", None, None)

    xf = torch.from_numpy(x8.astype(np.float32))
    wf = torch.from_numpy(w8.astype(np.float32))
    bf = torch.from_numpy(bias.astype(np.float32))

    def tf():
        return torch.nn.functional.linear(xf, wf, bf)

    qlin = nnq.Linear(kk, nn_)
    wq = torch.quantize_per_channel(wf * 0.01, torch.full((nn_,), 0.01, dtype=torch.double),
                                    torch.zeros(nn_, dtype=torch.long), 0, torch.qint8)
    qlin.set_weight_bias(wq, bf * 0.0001)
    qlin.scale, qlin.zero_point = 0.5, 128
    xq = torch.quantize_per_tensor(xf * 0.01 + 1.28, 0.01, 0, torch.quint8)

    def tq():
        return qlin(xq)

    rows.append(_row(name, m * kk * nn_, qf, tf, tq, repeat, verbose))
    return rows


def _row(name, macs, qf, tf, tq, repeat, verbose):
    with torch.no_grad():
        res = time_interleaved({"qframe": qf, "fp32": tf, "fbgemm": tq}, repeat)
    if verbose:
        for key, (med, mn) in res.items():
            print(f"  {name:36s} {key:7s} median {med * 1e3:8.3f} ms  min {mn * 1e3:8.3f} ms", file=sys.stderr)
    best = {key: mn for key, (med, mn) in res.items()}
    med = {key: md for key, (md, mn) in res.items()}
    gops = {key: 2 * macs / t / 1e9 for key, t in best.items()}
    return (name, best["qframe"] * 1e3, med["qframe"] * 1e3, gops["qframe"], gops["fp32"], gops["fbgemm"],
            best["fp32"] / best["qframe"], best["fbgemm"] / best["qframe"], med["fbgemm"] / med["qframe"])


# ---------------------------------------------------------------------------------------------- models


class ResNet18Shaped(nn.Module):
    """ResNet-18 with a stride-2 3x3 conv in place of the max pool; the quantized
    region ends before the global average pool (pool + fc run in float)."""

    def __init__(self, quant: nn.Module, dequant: nn.Module, num_classes: int = 1000) -> None:
        super().__init__()
        self.quant = quant
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU()
        self.pool_conv = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.pool_bn = nn.BatchNorm2d(64)
        self.pool_relu = nn.ReLU()
        blocks = []
        cin = 64
        for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
            blocks.append(BasicBlock(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.dequant = dequant
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.quant(x)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool_relu(self.pool_bn(self.pool_conv(x)))
        x = self.layers(x)
        x = self.dequant(x)
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
            m.bias.data = 0.1 * torch.randn(m.num_features, generator=g)
            m.running_mean = 0.1 * torch.randn(m.num_features, generator=g)
            m.running_var = 0.5 + torch.rand(m.num_features, generator=g)


def _qframe_convert(float_model: nn.Module, calib_batches, march: str, out_names=()) -> nn.Module:
    from qframe_core.quantization import FakeQuantState, convert_fx, prepare_qat_fx, set_fake_quantize
    from qframe_core.quantization.qconfig import (
        default_calib_8bit_fake_quant_qconfig,
        default_calib_8bit_weight_32bit_out_fake_quant_qconfig,
    )

    qconfig = {"": default_calib_8bit_fake_quant_qconfig}
    if out_names:
        qconfig["module_name"] = {n: default_calib_8bit_weight_32bit_out_fake_quant_qconfig for n in out_names}
    calib = prepare_qat_fx(copy.deepcopy(float_model).eval(), qconfig, march=march)
    calib.eval()
    set_fake_quantize(calib, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for x in calib_batches:
            calib(x)
    set_fake_quantize(calib, FakeQuantState.VALIDATION)
    return convert_fx(calib)


def _torch_ao_int8(float_model: nn.Module, calib_batches, float_names=()) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    mapping = get_default_qconfig_mapping("x86")
    for name in float_names:
        mapping = mapping.set_module_name(name, None)
    prepared = prepare_fx(copy.deepcopy(float_model).eval(), mapping, example_inputs=(calib_batches[0],))
    with torch.no_grad():
        for x in calib_batches:
            prepared(x)
    return convert_fx(prepared)


def bench_models(march: str, repeat: int, verbose: bool, quick: bool) -> list[tuple]:
    from qframe_core.quickstart import DigitsNet, digits_loaders

    rows = []
    # digits CNN, batch of 256 8x8 images (the quick start's test batch)
    torch.manual_seed(0)
    digits = DigitsNet().eval()
    _randomize_bn(digits)
    train, test = digits_loaders()
    calib = [x for x, _ in list(train)[:4]]
    xb = next(iter(test))[0][:256]
    q_digits = _qframe_convert(digits, calib, march, out_names=("classifier",))
    # the same net for torch.ao: its own stubs are identities in float; classifier int8 -> float at the end
    ao_digits = DigitsNet().eval()
    ao_digits.load_state_dict(digits.state_dict(), strict=False)
    ao_digits.quant, ao_digits.dequant = nn.Identity(), nn.Identity()
    t_digits = _torch_ao_int8(ao_digits, calib)
    rows.append(_model_row("digits CNN (batch 256, 1x8x8)", xb.shape[0], digits, q_digits, t_digits, xb, repeat,
                           verbose))

    # ResNet-18 shaped, 1x3x224x224 (avgpool and fc in float); MobileNetV2 shaped (the QAT benchmark's
    # CIFAR-style net), batch of 8 3x32x32: depthwise convs and 1x1 convs with short reductions (16-320 input
    # channels), where the exact requantization weighs most
    rows.append(_net_row("ResNet-18 shaped (1x3x224x224)", ResNet18Shaped, (1, 3, 224, 224), march, repeat, verbose,
                         quick, float_names=("avgpool", "fc")))
    rows.append(_net_row("MobileNetV2 shaped (8x3x32x32)", MobileNetV2Shaped, (8, 3, 32, 32), march, repeat, verbose,
                         quick))
    # segmentation-shaped: ConvTranspose2d, cat and bilinear resize between the convs
    rows.append(_net_row("UNet shaped (1x3x128x128)", UNetShaped, (1, 3, 128, 128), march, repeat, verbose, quick))
    return rows


def _net_row(name, net_cls, shape, march, repeat, verbose, quick, float_names=()):
    """The model row of a network built as ``net_cls(quant, dequant)``: randomized BN, calibrated on random
    batches of ``shape``; torch.ao's copy has identity stubs and leaves ``float_names`` in float."""
    from qframe_core.quantization import DeQuantStub, QuantStub

    torch.manual_seed(0)
    net = net_cls(QuantStub(), DeQuantStub()).eval()
    _randomize_bn(net)
    calib = [torch.randn(*shape) for _ in range(2 if quick else 4)]
    q_net = _qframe_convert(net, calib, march)
    ao_net = net_cls(nn.Identity(), nn.Identity()).eval()
    ao_net.load_state_dict(net.state_dict(), strict=False)
    t_net = _torch_ao_int8(ao_net, calib, float_names=float_names)
    return _model_row(name, shape[0], net, q_net, t_net, torch.randn(*shape), repeat, verbose)


def _model_row(name, batch, float_model, q_model, t_model, x, repeat, verbose):
    def run_ao():
        torch.backends.quantized.engine = "x86"
        return t_model(x)

    with torch.no_grad():
        res = time_interleaved({"qframe": lambda: q_model(x), "float": lambda: float_model(x), "torch.ao": run_ao},
                                repeat, warmup=2, budget_s=25.0)
    if verbose:
        for key, (med, mn) in res.items():
            print(f"  {name:36s} {key:8s} median {med * 1e3:8.3f} ms  min {mn * 1e3:8.3f} ms", file=sys.stderr)
    best = {key: mn for key, (med, mn) in res.items()}
    med = {key: md for key, (md, mn) in res.items()}
    ips = {key: batch / t for key, t in best.items()}
    return (name, best["qframe"] * 1e3, best["float"] * 1e3, best["torch.ao"] * 1e3, ips["qframe"], ips["float"],
            ips["torch.ao"], best["float"] / best["qframe"], best["torch.ao"] / best["qframe"],
            med["float"] / med["qframe"], med["torch.ao"] / med["qframe"])


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--march", default="bayes", choices=["bayes", "bernoulli2"])
    ap.add_argument("--repeat", type=int, default=50, help="timed calls per measurement (median reported)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    ap.add_argument("--skip-models", action="store_true", help="only the op rows")
    ap.add_argument("-v", "--verbose", action="store_true", help="raw median/min lines on stderr")
    args = ap.parse_args(argv)
    repeat = 5 if args.quick else args.repeat
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")

    from qframe_core.nn.quantized.kernels import march_kernels

    k = march_kernels(args.march)
    feats = k.cpu_features()
    print(f"# qframe kernel benchmark  {datetime.datetime.now():%Y-%m-%d %H:%M}  march={args.march}")
    print(f"# machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}")
    print(f"# threads: torch {torch.get_num_threads()}, qframe OpenMP {feats['openmp_threads']}; "
          f"qframe kernel path: {feats['kernel']} (int8 GEMM: {feats.get('kernel_int8', feats['kernel'])}); "
          f"torch quantized engines: fbgemm (ops), x86 (models)")
    print(f"# times: best of up to {repeat} interleaved rounds after warm-up (ratios of medians in parentheses);"
          f" the machine may be shared")
    print()
    rows = bench_ops(k, repeat, args.verbose)
    hdr = (f"| {'op':34s} | {'qframe ms':>9s} | {'(median)':>8s} | {'qframe GOP/s':>12s} | {'fp32 GOP/s':>10s} "
           f"| {'fbgemm GOP/s':>12s} | {'vs fp32':>7s} | {'vs fbgemm':>9s} | {'(median)':>8s} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for name, ms, mmed, gq, gf, gt, rf, rt, rtm in rows:
        print(f"| {name:34s} | {ms:9.3f} | {mmed:8.3f} | {gq:12.1f} | {gf:10.1f} | {gt:12.1f} | {rf:6.2f}x "
              f"| {rt:8.2f}x | {rtm:7.2f}x |")
    if args.skip_models:
        return 0
    print()
    mrows = bench_models(args.march, repeat, args.verbose, args.quick)
    hdr = (f"| {'model':30s} | {'qframe ms':>9s} | {'float ms':>8s} | {'torch.ao int8 ms':>16s} | {'qframe img/s':>12s} "
           f"| {'float img/s':>11s} | {'torch.ao img/s':>14s} | {'vs float':>8s} | {'vs torch.ao':>11s} "
           f"| {'(medians)':>15s} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for name, qm, fm, tm, qi, fi, ti, rf, rt, rfm, rtm in mrows:
        print(f"| {name:30s} | {qm:9.2f} | {fm:8.2f} | {tm:16.2f} | {qi:12.1f} | {fi:11.1f} | {ti:14.1f} "
              f"| {rf:7.2f}x | {rt:10.2f}x | {rfm:5.2f}x / {rtm:5.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
