"""QAT training-step time vs float and torch.ao, and prepare/convert wall time, in one run.

    python benchmarks/qat_step.py                 # ~1-3 minutes on 2 CPU cores
    python benchmarks/qat_step.py --threads 1 --rounds 4

1. Training step (forward + cross-entropy + backward + ``SGD.step``), batch 32 of
   3x32x32 images, 10 classes, for a MobileNetV2-shaped and a ResNet-18-shaped
   CIFAR-style network (defined here; QuantStub at the input, DeQuantStub at the
   output, functional ``+`` for the residual adds), each as

   * **float**: the network itself, ``model.train()``;
   * **qframe QAT**: ``qframe_core.quantization.prepare_qat_fx(model, {"":
     default_qat_8bit_fake_quant_qconfig}, march="bayes")``, FakeQuantize in QAT
     state, ``model.train()``;
   * **torch.ao QAT**: ``torch.ao.quantization.quantize_fx.prepare_qat_fx`` with
     ``get_default_qat_qconfig_mapping("x86")`` (fused moving-average fake-quantize)
     of the same network with identity stubs;

   all three starting from the same float weights.  Target: qframe QAT/float <=
   torch.ao QAT/float.

2. ``prepare_qat_fx`` and ``convert_fx`` wall time of a ResNet-50-shaped network
   (bottleneck blocks [3, 4, 6, 3], 1000 classes), calibrated with one small batch
   in between (that forward is printed but not part of the sum).  Target: <= 1 s.
   torch.ao's own ``prepare_qat_fx`` + ``convert_fx`` of the same network is
   printed for reference.

Timing: the candidates are run in interleaved rounds (one step / one
prepare-calibrate-convert of each per round, after warm-up), so load from other
processes on a shared machine hits them alike; the tables show the best and the
median round of each, and the ratios of both.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from blocks import BasicBlock, MobileNetV2Shaped, conv_bn  # benchmarks/blocks.py: the scripts run from this folder
from tabulate import tabulate
from torch import nn

# ---------------------------------------------------------------------------------------------- models


class ResNet18Shaped(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max pool, stages 64-128-256-512."""

    def __init__(self, quant: nn.Module, dequant: nn.Module, num_classes: int = 10) -> None:
        super().__init__()
        self.quant = quant
        self.stem = conv_bn(3, 64, 3, 1)
        blocks, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self.dequant = dequant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.quant(x)))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu3 = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNet50Shaped(nn.Module):
    """ResNet-50: 7x7 stem, max pool, bottleneck stages [3, 4, 6, 3], global pool, fc (all quantized)."""

    def __init__(self, quant: nn.Module, dequant: nn.Module, num_classes: int = 1000) -> None:
        super().__init__()
        self.quant = quant
        self.stem = conv_bn(3, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], 64
        for i, (width, n) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * 4
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.dequant = dequant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.maxpool(self.stem(self.quant(x))))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, as a trained model has (BN folding then matters)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.8 + 0.6)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model


# ---------------------------------------------------------------------------------------------- timing

def _time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int,
                      budget_s: float = float("inf"), min_rounds: int = 3) -> dict[str, list[float]]:
    """{key: [seconds per round]}: one call of each function per round (the order rotating from round
    to round), after ``warmup`` calls of each; stops early once ``budget_s`` is spent and
    ``min_rounds`` rounds are done (a busy machine)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    keys = list(fns)
    times: dict[str, list[float]] = {key: [] for key in keys}
    start = time.perf_counter()
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            t0 = time.perf_counter()
            fns[key]()
            times[key].append(time.perf_counter() - t0)
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return times


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------- 1. QAT step

def _qframe_qat(float_model: nn.Module, march: str) -> nn.Module:
    from qframe_core.quantization import prepare_qat_fx
    from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig

    qat = prepare_qat_fx(copy.deepcopy(float_model), {"": default_qat_8bit_fake_quant_qconfig}, march=march)
    return qat.train()


def _torch_ao_qat(ao_float_model: nn.Module, x: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    torch.backends.quantized.engine = "x86"
    qat = prepare_qat_fx(copy.deepcopy(ao_float_model).train(), get_default_qat_qconfig_mapping("x86"),
                         example_inputs=(x,))
    return qat.train()


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss)

    return step


def bench_qat_step(name: str, build: Callable[[nn.Module, nn.Module], nn.Module], march: str, batch: int,
                   rounds: int, warmup: int, budget_s: float) -> dict:
    from qframe_core.quantization import DeQuantStub, QuantStub

    torch.manual_seed(0)
    net = _randomize_bn(build(QuantStub(), DeQuantStub()))
    ao_net = build(nn.Identity(), nn.Identity())
    ao_net.load_state_dict(net.state_dict(), strict=False)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    models = {
        "float": copy.deepcopy(net).train(),
        "qframe QAT": _qframe_qat(net, march),
        "torch.ao QAT": _torch_ao_qat(ao_net, x),
    }
    steps = {}
    for key, m in models.items():
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        steps[key] = _train_step(m, opt, x, y)

    def ao_step(step=steps["torch.ao QAT"]) -> float:
        torch.backends.quantized.engine = "x86"
        return step()

    steps["torch.ao QAT"] = ao_step
    times = _time_interleaved(steps, rounds, warmup, budget_s)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"name": name, "best": best, "median": med, "rounds": len(times["float"])}


# ---------------------------------------------------------------------------------------------- 2. prepare/convert

def bench_prepare_convert(march: str, rounds: int, torch_ao: bool) -> dict:
    from qframe_core.quantization import (
        DeQuantStub,
        FakeQuantState,
        QuantStub,
        convert_fx,
        prepare_qat_fx,
        set_fake_quantize,
    )
    from qframe_core.quantization.qconfig import default_calib_8bit_fake_quant_qconfig

    torch.manual_seed(0)
    net = _randomize_bn(ResNet50Shaped(QuantStub(), DeQuantStub())).eval()
    ao_net = ResNet50Shaped(nn.Identity(), nn.Identity())
    ao_net.load_state_dict(net.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)  # shapes do not matter to prepare/convert; a small batch calibrates quickly
    times: dict[str, list[float]] = {k: [] for k in ("qframe prepare", "qframe calib", "qframe convert",
                                                     "torch.ao prepare", "torch.ao calib", "torch.ao convert")}

    def qframe_round() -> None:
        model = copy.deepcopy(net)
        t0 = time.perf_counter()
        calib = prepare_qat_fx(model, {"": default_calib_8bit_fake_quant_qconfig}, march=march)
        t1 = time.perf_counter()
        calib.eval()
        set_fake_quantize(calib, FakeQuantState.CALIBRATION)
        with torch.no_grad():
            calib(x)
        set_fake_quantize(calib, FakeQuantState.VALIDATION)
        t2 = time.perf_counter()
        convert_fx(calib)
        t3 = time.perf_counter()
        times["qframe prepare"].append(t1 - t0)
        times["qframe calib"].append(t2 - t1)
        times["qframe convert"].append(t3 - t2)

    def torch_ao_round() -> None:
        from torch.ao.quantization import get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx as ao_convert_fx
        from torch.ao.quantization.quantize_fx import prepare_qat_fx as ao_prepare_qat_fx

        torch.backends.quantized.engine = "x86"
        model = copy.deepcopy(ao_net).train()
        t0 = time.perf_counter()
        prepared = ao_prepare_qat_fx(model, get_default_qat_qconfig_mapping("x86"), example_inputs=(x,))
        t1 = time.perf_counter()
        prepared.eval()
        with torch.no_grad():
            prepared(x)
        t2 = time.perf_counter()
        ao_convert_fx(prepared)
        t3 = time.perf_counter()
        times["torch.ao prepare"].append(t1 - t0)
        times["torch.ao calib"].append(t2 - t1)
        times["torch.ao convert"].append(t3 - t2)

    qframe_round()  # warm-up: imports, plugin loading, first-call caches
    if torch_ao:
        torch_ao_round()
    for v in times.values():
        v.clear()
    for _ in range(rounds):
        qframe_round()
        if torch_ao:
            torch_ao_round()
    return {k: v for k, v in times.items() if v}


# ---------------------------------------------------------------------------------------------- main

def _ms(t: float) -> str:
    return f"{t * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--march", default="bayes", choices=["bayes", "bernoulli2"])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=8, help="timed interleaved training-step rounds per model (at most)")
    ap.add_argument("--budget", type=float, default=35.0,
                    help="seconds of timed rounds per model before stopping early (at least 3 rounds)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each candidate first")
    ap.add_argument("--pc-rounds", type=int, default=3, help="timed prepare/convert rounds")
    ap.add_argument("--models", default="mobilenetv2,resnet18", help="comma-separated subset of the step models")
    ap.add_argument("--skip-step", action="store_true", help="only the prepare/convert table")
    ap.add_argument("--skip-prepare", action="store_true", help="only the training-step table")
    ap.add_argument("--no-torch-ao-prepare", action="store_true", help="skip torch.ao's prepare/convert reference")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    print(f"# qframe QAT benchmark  {datetime.datetime.now():%Y-%m-%d %H:%M}  march={args.march}")
    print(f"# machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"# times: best / median of up to {args.rounds} interleaved rounds (fewer past {args.budget:.0f} s) after "
          f"{args.warmup} warm-up steps each; ratios of bests (of medians); the machine may be shared")
    print()
    start = time.perf_counter()
    results = {"pass": True}

    if not args.skip_step:
        builders = {"mobilenetv2": ("MobileNetV2-shaped", MobileNetV2Shaped),
                    "resnet18": ("ResNet-18-shaped", ResNet18Shaped)}
        rows = []
        for key in [k.strip() for k in args.models.split(",") if k.strip()]:
            label, cls = builders[key]
            r = bench_qat_step(label, cls, args.march, args.batch, args.rounds, args.warmup, args.budget)
            b, m = r["best"], r["median"]
            q_ratio, t_ratio = b["qframe QAT"] / b["float"], b["torch.ao QAT"] / b["float"]
            qm_ratio, tm_ratio = m["qframe QAT"] / m["float"], m["torch.ao QAT"] / m["float"]
            ok = q_ratio <= t_ratio
            results["pass"] &= ok
            rows.append((f"{label} (batch {args.batch}, 3x32x32)",
                         f"{_ms(b['float'])} / {_ms(m['float'])}",
                         f"{_ms(b['qframe QAT'])} / {_ms(m['qframe QAT'])}",
                         f"{_ms(b['torch.ao QAT'])} / {_ms(m['torch.ao QAT'])}",
                         f"{q_ratio:.2f}x ({qm_ratio:.2f}x)", f"{t_ratio:.2f}x ({tm_ratio:.2f}x)",
                         r["rounds"], "PASS" if ok else "FAIL"))
        print("Training step (forward + loss + backward + SGD step), ms best / median:")
        print(tabulate(rows, headers=["model", "float ms", "qframe QAT ms", "torch.ao QAT ms",
                                      "qframe/float (med)", "torch.ao/float (med)", "rounds",
                                      "qframe/float <= torch.ao/float"], tablefmt="github"))
        print()

    if not args.skip_prepare:
        t = bench_prepare_convert(args.march, args.pc_rounds, not args.no_torch_ao_prepare)
        rows = []
        for lib in ("qframe", "torch.ao"):
            if f"{lib} prepare" not in t:
                continue
            p, c, cal = t[f"{lib} prepare"], t[f"{lib} convert"], t[f"{lib} calib"]
            total = [a + b for a, b in zip(p, c)]
            row = [lib, f"{_ms(min(p))} / {_ms(statistics.median(p))}", f"{_ms(min(c))} / {_ms(statistics.median(c))}",
                   f"{_ms(min(total))} / {_ms(statistics.median(total))}",
                   f"{_ms(min(cal))} / {_ms(statistics.median(cal))}"]
            if lib == "qframe":
                ok = min(total) <= 1.0
                results["pass"] &= ok
                row.append("PASS" if ok else "FAIL")
            else:
                row.append("(reference)")
            rows.append(row)
        print(f"ResNet-50-shaped prepare_qat_fx + convert_fx, ms best / median of {args.pc_rounds} rounds "
              f"(calibration forward on 2x3x64x64 not in the sum):")
        print(tabulate(rows, headers=["library", "prepare ms", "convert ms", "prepare+convert ms",
                                      "(calibration ms)", "qframe <= 1 s"], tablefmt="github"))
        print()
    print(f"# total run time {time.perf_counter() - start:.0f} s; targets {'all met' if results['pass'] else 'NOT all met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
