"""Speed of qframe's integer ops beyond conv/linear against the float op, in one run.

    python benchmarks/ops.py [--march bayes] [--repeat 30] [--only grid_sample,GLU]

For each row a small model (QuantStub -> op -> DeQuantStub) is calibrated and converted; the integer op module
of the converted model is then timed on the integer codes it receives, against the float op on the float
inputs, in interleaved rounds (best round of each; ratio of medians in parentheses).  The integer op is exact
(its tests compare it bit for bit with references of the march rules); the ratio is integer time / float time,
so lower is better and 1.0x is parity.

RoIAlign's float baseline is torchvision's C++ ``roi_align`` when torchvision is installed, else qframe's pure
torch ``float_roi_align`` (much slower: the header says which).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from timing import time_interleaved  # benchmarks/timing.py: the scripts run from this folder
from torch import nn


def _models():
    """(name, float model, example inputs, qconfig) of each row: one op between stubs."""
    from qframe_core.nn import RoIAlign
    from qframe_core.quantization import DeQuantStub, QuantStub
    from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as q8
    from qframe_core.quantization.qconfig import default_qat_16bit_fake_quant_qconfig as q16

    class One(nn.Module):
        def __init__(self, fn, mod=None):
            super().__init__()
            self.q0, self.dq, self.fn, self.mod = QuantStub(), DeQuantStub(), fn, mod

        def forward(self, a):
            return self.dq(self.fn(self, self.q0(a)))

    class Two(One):
        def __init__(self, fn, mod=None):
            super().__init__(fn, mod)
            self.q1 = QuantStub()

        def forward(self, a, b):
            return self.dq(self.fn(self, self.q0(a), self.q1(b)))

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.cell, self.dq = QuantStub(), nn.LSTMCell(256, 256), DeQuantStub()

        def forward(self, x):
            return self.dq(self.cell(self.q(x))[0])

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.mha, self.dq = QuantStub(), nn.MultiheadAttention(256, 8, batch_first=True), DeQuantStub()

        def forward(self, x, mask):
            y = self.q(x)
            return self.dq(self.mha(y, y, y, attn_mask=mask, need_weights=False)[0])

    g = torch.Generator().manual_seed(0)
    grid = torch.rand(2, 64, 64, 2, generator=g) * 2 - 1
    xy = torch.rand(100, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + torch.rand(100, 2, generator=g) * 100 + 8], 1)
    causal = torch.ones(128, 128, dtype=torch.bool).triu(1)
    y, y2 = torch.randn(1, 64, 56, 56, generator=g), torch.randn(1, 64, 56, 56, generator=g)
    return [
        ("bilinear resize 1x64x56x56 x2", One(lambda s, a: F.interpolate(a, scale_factor=2, mode="bilinear")),
         [torch.randn(1, 64, 56, 56, generator=g)], q8),
        ("nearest resize 1x64x56x56 x2", One(lambda s, a: F.interpolate(a, scale_factor=2, mode="nearest")),
         [torch.randn(1, 64, 56, 56, generator=g)], q8),
        ("grid_sample bilinear 2x32x64x64", Two(lambda s, a, b: F.grid_sample(a, b, align_corners=False)),
         [torch.randn(2, 32, 64, 64, generator=g), grid], q8),
        ("grid_sample nearest 2x32x64x64", Two(lambda s, a, b: F.grid_sample(a, b, "nearest", align_corners=False)),
         [torch.randn(2, 32, 64, 64, generator=g), grid], q8),
        ("RoIAlign 1x256x50x50, 100 boxes, 7x7", Two(lambda s, a, b: s.mod(a, [b]), RoIAlign(7, 1 / 8, 2)),
         [torch.randn(1, 256, 50, 50, generator=g), boxes], {"": q8, "module_name": [("q1", q16)]}),
        ("ConvTranspose2d 64->64 4x4/2, 1x64x56x56", One(lambda s, a: s.mod(a), nn.ConvTranspose2d(64, 64, 4, 2, 1)),
         [torch.randn(1, 64, 56, 56, generator=g)], q8),
        ("Conv3d 32->32 3x3x3, 1x32x8x28x28", One(lambda s, a: s.mod(a), nn.Conv3d(32, 32, 3, 1, 1)),
         [torch.randn(1, 32, 8, 28, 28, generator=g)], q8),
        ("add 1x64x56x56 + 1x64x56x56", Two(lambda s, a, b: a + b), [y, y2], q8),
        ("mul 1x64x56x56 * 1x64x1x1 (SE scale)", Two(lambda s, a, b: a * b),
         [y, torch.rand(1, 64, 1, 1, generator=g)], q8),
        ("cat 2 x 1x64x56x56", Two(lambda s, a, b: torch.cat([a, b], 1)), [y, y2], q8),
        ("AvgPool2d 2x2, 1x64x56x56", One(lambda s, a: s.mod(a), nn.AvgPool2d(2)), [y], q8),
        ("global avg pool 1x512x7x7", One(lambda s, a: s.mod(a), nn.AdaptiveAvgPool2d(1)),
         [torch.randn(1, 512, 7, 7, generator=g)], q8),
        ("Linear 256->256 + add, 1024x256", Two(lambda s, a, b: s.mod(a) + b, nn.Linear(256, 256)),
         [torch.randn(1024, 256, generator=g), torch.randn(1024, 256, generator=g)], q8),
        ("GLU 1x128x56x56", One(lambda s, a: F.glu(a, 1)), [torch.randn(1, 128, 56, 56, generator=g)], q8),
        ("LSTMCell 64x256", Cell(), [torch.randn(64, 256, generator=g)], q8),
        ("MHA self-attention 8x128x256, 8 heads", Attention(), [torch.randn(8, 128, 256, generator=g), None], q8),
        ("MHA causal mask 8x128x256, 8 heads", Attention(), [torch.randn(8, 128, 256, generator=g), causal], q8),
    ]


def _convert(model: nn.Module, inputs, qconfig, march: str) -> nn.Module:
    from qframe_core.quantization import FakeQuantState, convert_fx, prepare_qat_fx, set_fake_quantize

    qat = prepare_qat_fx(model, qconfig if isinstance(qconfig, dict) else {"": qconfig}, march=march)
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for _ in range(2):
            qat(*inputs)
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    return convert_fx(qat)


def _op_and_codes(qmodel: nn.Module, inputs):
    """The converted model's op (a module, or the method a FloatFunctional call site runs) and its arguments."""
    from qframe_core.nn.quantized.stubs import DeQuantize, Quantize

    seen = {}

    def grab(mod, args, kwargs):
        seen.setdefault("call", (mod, args, kwargs))

    hooks = [m.register_forward_pre_hook(grab, with_kwargs=True) for _, m in qmodel.named_children()
             if not isinstance(m, (Quantize, DeQuantize))]
    methods = []  # FloatFunctional call sites run a method of their module, not forward
    for node in qmodel.graph.nodes:
        if node.op == "call_method" and node.args and getattr(node.args[0], "op", "") == "get_attr":
            mod = qmodel.get_submodule(node.args[0].target)
            bound = getattr(mod, node.target)

            def spy(*args, bound=bound, **kwargs):
                seen.setdefault("call", (bound, args, kwargs))
                return bound(*args, **kwargs)
            setattr(mod, node.target, spy)
            methods.append((mod, node.target))
    with torch.no_grad():
        qmodel(*inputs)
    for h in hooks:
        h.remove()
    for mod, name in methods:
        delattr(mod, name)
    return seen["call"]


def _float_op(model: nn.Module, name: str):
    """The float op alone (without the stubs, which are identities in float)."""
    if name.startswith("RoIAlign"):
        try:
            from torchvision.ops import roi_align

            m = model.mod
            return (lambda a, b: roi_align(a, [b], m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned)), \
                "torchvision"
        except ImportError:
            return (lambda a, b: model.mod(a, [b])), "qframe float_roi_align (pure torch; no torchvision)"
    return model, "torch"


def bench(march: str, repeat: int, only=None, verbose: bool = False) -> list[tuple]:
    from qframe_core.errors import UnsupportedOpError

    rows = []
    for name, model, inputs, qconfig in _models():
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        model = model.eval()
        try:
            qmodel = _convert(model, inputs, qconfig, march)
        except UnsupportedOpError:  # the march's op table does not list it
            rows.append((name, "not on " + march, float("nan"), float("nan"), float("nan"), float("nan"), "torch"))
            continue
        op, args, kwargs = _op_and_codes(qmodel, inputs)
        float_fn, baseline = _float_op(model, name)
        def run_integer(op=op, args=args, kwargs=kwargs):
            return op(*args, **kwargs)

        def run_float(fn=float_fn, inputs=inputs):
            return fn(*inputs)

        with torch.no_grad():
            res = time_interleaved({"integer": run_integer, "float": run_float}, repeat, budget_s=6.0)
        if verbose:
            for key, (med, mn) in res.items():
                print(f"  {name:40s} {key:8s} median {med * 1e3:8.3f} ms  min {mn * 1e3:8.3f} ms", file=sys.stderr)
        (qm, qb), (fm, fb) = res["integer"], res["float"]
        label = getattr(op, "__qualname__", None) or type(op).__name__  # a FloatFunctional method or a module
        rows.append((name, label, qb * 1e3, fb * 1e3, qb / fb, qm / fm, baseline))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--march", default="bayes", choices=["bayes", "bernoulli2"])
    ap.add_argument("--repeat", type=int, default=30, help="interleaved rounds per row")
    ap.add_argument("--only", default="", help="comma-separated parts of row names")
    ap.add_argument("-v", "--verbose", action="store_true", help="raw median/min lines on stderr")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from qframe_core.nn.quantized.kernels import march_kernels

    feats = march_kernels(args.march).cpu_features()
    print(f"# qframe integer ops vs float  {datetime.datetime.now():%Y-%m-%d %H:%M}  march={args.march}")
    print(f"# {os.cpu_count()} logical CPUs; torch {torch.__version__}; threads: torch {torch.get_num_threads()}, "
          f"qframe OpenMP {feats['openmp_threads']}; qframe kernel path: {feats['kernel']}")
    print("# integer op on its codes vs the float op: best of interleaved rounds (ratio of medians in parentheses)")
    print()
    only = [o for o in args.only.split(",") if o]
    rows = bench(args.march, args.repeat, only, args.verbose)
    hdr = (f"| {'op':40s} | {'integer op':18s} | {'integer ms':>10s} | {'float ms':>8s} | {'int / float':>11s} "
           f"| {'(medians)':>9s} |")
    print(hdr)
    print("|" + "|".join("-" * len(c) for c in hdr.split("|")[1:-1]) + "|")
    notes = set()
    for name, mod, qms, fms, r, rm, baseline in rows:
        print(f"| {name:40s} | {mod:18s} | {qms:10.3f} | {fms:8.3f} | {r:10.2f}x | {rm:8.2f}x |")
        if baseline != "torch":
            notes.add(f"# {name}: float baseline = {baseline}")
    for n in sorted(notes):
        print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
