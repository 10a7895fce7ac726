"""``perf_model``: measured speed of the compiled integer model on this host's CPU kernels.

There is no accelerator and no performance model here: the figures are
wall-clock measurements of the compiled artifact running on the march's
integer kernel extension on the host CPU (the seeds' HBDK estimates BPU
figures instead).  DDR traffic is an estimate from the graph: the integer
weights read once, plus every op reading its inputs and writing its outputs
once (views excluded).
"""

from __future__ import annotations

import html
import json
import os
import statistics
import time
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from . import graph as g
from .check import InputSource, _short
from .compile import Opt, compile_to_memory, load_compiled, weight_bytes, write_artifact
from .visualize import render_svg

#: show a progress bar when the timing loop is expected to take longer than this (seconds)
PROGRESS_AFTER_S = 2.0


def _time_calls(fn: Callable[[], Any], warmup: int, iterations: int, desc: str = "") -> list[float]:
    """Per-call wall times in microseconds (after ``warmup`` untimed calls; TorchScript optimizes on the first
    calls, so keep warmup >= 3)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        first = time.perf_counter()
        fn()
        estimate = (time.perf_counter() - first) * iterations
        times = []
        steps: Any = range(iterations)
        if desc and estimate > PROGRESS_AFTER_S:
            from tqdm import tqdm

            steps = tqdm(steps, desc=desc, leave=False)
        for _ in steps:
            t0 = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - t0) / 1e3)
    return times


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _traffic(dg: g.DeployGraph) -> int:
    total = 0
    for layer in dg.layers:
        if layer.kind == g.LAYOUT:
            continue
        total += sum(i.nbytes for i in layer.input_info if i is not None)
        total += sum(o.nbytes for o in layer.output_info if o is not None)
    return total


def _layer_rows(dg: g.DeployGraph, inputs: tuple, warmup: int, iterations: int) -> list[dict]:
    """Each layer run alone on its captured inputs, timed."""
    pieces = []
    wanted: list = []
    for layer in dg.layers:
        try:
            fn, takes = g.layer_function(dg, layer)
        except Exception as exc:  # reported in the row, never silently dropped
            pieces.append((layer, None, [], f"{type(exc).__name__}: {exc}"))
            continue
        pieces.append((layer, fn, takes, ""))
        wanted.extend(v for v in takes if v not in wanted)
    values = dict(zip(wanted, g.capture(dg, wanted, inputs))) if wanted else {}
    rows = []
    try:
        from tqdm import tqdm

        iterator: Any = tqdm(pieces, desc="perf_model layers", leave=False, disable=len(pieces) * iterations < 2000)
    except ImportError:  # pragma: no cover
        iterator = pieces
    for layer, fn, takes, error in iterator:
        row: dict[str, Any] = {
            "index": layer.index, "layer": layer.name, "op": layer.op, "kind": layer.kind,
            "inputs": [str(i) for i in layer.input_info if i is not None],
            "outputs": [str(o) for o in layer.output_info if o is not None],
            "macs": layer.macs, "time_us": None, "min_us": None, "gops": None, "note": error,
        }
        if fn is not None:
            args = [values[v] for v in takes]
            try:
                times = _time_calls(lambda fn=fn, args=args: fn(*args), warmup, iterations)
                row["time_us"], row["min_us"] = statistics.median(times), min(times)
                if layer.macs and row["time_us"] > 0:
                    row["gops"] = 2 * layer.macs / (row["time_us"] * 1e3)
            except Exception as exc:
                row["note"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    timed = sum(r["time_us"] for r in rows if r["time_us"] is not None)
    for r in rows:
        r["share"] = (r["time_us"] / timed) if r["time_us"] is not None and timed > 0 else None
    return rows


def perf_model(module: nn.Module, example_inputs: g.ExampleInputs, out_dir: Union[str, os.PathLike],
               march: Optional[str] = None, input_source: InputSource = "ddr", opt: Opt = "O1",
               layer_details: bool = False, warmup: int = 5, iterations: int = 50, threads: Optional[int] = None
               ) -> dict:
    """Compile a converted model and measure it on the host CPU integer kernels (the seeds' ``perf_model``).

    The model is compiled as by :func:`compile_model` into ``<out_dir>/<model class>.hbm``, reloaded, and run
    ``iterations`` times on ``example_inputs`` after ``warmup`` runs.  Reported: median and p90 latency (us),
    FPS (``batch * 1e6 / median latency``: frames per second at the example batch size), MACs and achieved
    GOP/s, and a DDR-traffic estimate in bytes (integer weights once + every op's inputs and outputs once).
    ``layer_details=True`` also times every op alone on its captured inputs (same warmup/iterations), with its
    MACs, GOP/s and share of the summed layer time (median and min per op).  ``threads`` sets torch's
    intra-op threads while measuring (restored afterwards); on a busy host 1 thread gives steadier figures.

    These are measurements of this machine's CPU kernels, not an accelerator estimate.

    Writes ``<out_dir>/<model class>.html`` (self-contained: inline CSS and the graph as inline SVG) and
    ``<out_dir>/<model class>.json`` with the same figures; returns them as a dict.  ``<model class>`` is the
    float model's class for a model converted by ``convert_fx`` and for its ``torch.jit.trace`` (recorded by
    ``prepare_qat_fx``: ``FxQATReadyMobileNetV2.html``), ``GraphModule`` for a GraphModule without that record.
    """
    if warmup < 0 or iterations < 1:
        raise ValueError(f"perf_model: need warmup >= 0 and iterations >= 1, got warmup={warmup}, "
                         f"iterations={iterations}")
    start = time.perf_counter()
    inputs = g.as_inputs(example_inputs, "perf_model")
    compiled, manifest, report, reference = compile_to_memory(module, inputs, march, input_source, opt, "perf_model")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    name = report.model
    artifact = os.path.join(out_dir, f"{name}.hbm")
    write_artifact(compiled, manifest, artifact, inputs, reference)
    print(f"consumed time {time.perf_counter() - start:.6f}")
    print("qframe model compilation SUCCESS")

    runtime, _ = load_compiled(artifact)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        figures = _measure(runtime, report, manifest, inputs, artifact, warmup, iterations, layer_details)
    finally:
        torch.set_num_threads(saved_threads)
    base = os.path.join(out_dir, name)
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(figures, f, indent=1)
    with open(base + ".html", "w", encoding="utf-8") as f:
        f.write(_html(figures, render_svg(report.graph, f"{name} (march {report.march})")))
    figures["html"], figures["json"] = base + ".html", base + ".json"
    print(f"    FPS={figures['fps']:.2f}, latency = {figures['latency_us']['median']:.1f} us, "
          f"DDR = {figures['ddr_bytes']} bytes   (see {base}.html)")
    print("qframe performance measurement SUCCESS (measured on the host CPU integer kernels)")
    return figures


def _measure(runtime: torch.jit.ScriptModule, report: Any, manifest: dict, inputs: tuple, artifact: str,
             warmup: int, iterations: int, layer_details: bool) -> dict:
    times = _time_calls(lambda: runtime(*inputs), max(warmup, 3), iterations, desc="perf_model")
    median, p90 = statistics.median(times), _percentile(times, 0.9)
    batch = int(inputs[0].shape[0]) if inputs[0].dim() > 0 else 1
    dg = report.graph
    wbytes = weight_bytes(report)
    act_bytes = _traffic(dg)
    figures: dict[str, Any] = {
        "model": report.model, "march": report.march, "opt": manifest["opt"],
        "optimizations": manifest["optimizations"], "input_source": report.input_sources,
        "artifact": os.path.abspath(artifact),
        "measured_on": "host CPU, the march's integer kernel extension (not an accelerator estimate)",
        "torch_threads": torch.get_num_threads(), "batch": batch, "warmup": max(warmup, 3), "iterations": iterations,
        "latency_us": {"median": median, "p90": p90, "min": min(times), "mean": statistics.fmean(times)},
        "fps": batch * 1e6 / median,
        "macs": report.total_macs, "gops": 2 * report.total_macs / (median * 1e3),
        "ddr_bytes": wbytes + act_bytes, "weight_bytes": wbytes, "activation_bytes": act_bytes,
        "num_ops": len(report.layers), "op_counts": manifest["op_counts"],
    }
    if layer_details:
        rows = _layer_rows(dg, inputs, max(warmup, 3), iterations)
        figures["layers"] = rows
        figures["layers_total_us"] = sum(r["time_us"] for r in rows if r["time_us"] is not None)
    return figures


_CSS = """body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f0f0f0}
td.n{text-align:right;font-family:monospace}.note{color:#666;font-size:13px}.bar{background:#7aa6d8;height:10px}
.graph{overflow:auto;border:1px solid #ddd;margin-top:12px}"""


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _html(f: dict, svg: str) -> str:
    lat = f["latency_us"]
    applied = ", ".join(f["optimizations"]) or "no graph optimization"
    summary = [("model", f["model"]), ("march", f["march"]), ("opt", f"{f['opt']} ({applied})"),
               ("input source", ", ".join(f["input_source"])), ("batch", f["batch"]),
               ("latency median (us)", lat["median"]), ("latency p90 (us)", lat["p90"]), ("FPS", f["fps"]),
               ("MACs", f["macs"]), ("GOP/s", f["gops"]), ("DDR estimate (bytes)", f["ddr_bytes"]),
               ("weights (bytes)", f["weight_bytes"]), ("activations (bytes)", f["activation_bytes"]),
               ("ops", f["num_ops"]), ("torch threads", f["torch_threads"]),
               ("iterations (warmup)", f"{f['iterations']} ({f['warmup']})")]
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           f"<title>{html.escape(f['model'])} — qframe perf</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(f['model'])} on march {html.escape(f['march'])}</h1>",
           f"<p class='note'>Measured on {html.escape(f['measured_on'])}. DDR is an estimate: integer weights read "
           f"once plus every op reading its inputs and writing its outputs once (views excluded).</p>",
           "<table>"]
    out += [f"<tr><th>{html.escape(k)}</th><td class='n'>{_fmt(v)}</td></tr>" for k, v in summary]
    out.append("</table>")
    if "layers" in f:
        out.append(f"<h2>Per-layer (each op timed alone; sum {_fmt(f['layers_total_us'])} us)</h2><table>")
        out.append("<tr><th>#</th><th>layer</th><th>op</th><th>inputs</th><th>outputs</th><th>MACs</th>"
                   "<th>time (us)</th><th>GOP/s</th><th>share</th><th></th></tr>")
        for r in f["layers"]:
            share = r["share"] or 0.0
            out.append(f"<tr><td class='n'>{r['index']}</td><td>{html.escape(r['layer'])}</td>"
                       f"<td>{html.escape(_short(r['op']))}</td><td>{html.escape(', '.join(r['inputs']))}</td>"
                       f"<td>{html.escape(', '.join(r['outputs']))}</td><td class='n'>{_fmt(r['macs'])}</td>"
                       f"<td class='n'>{_fmt(r['time_us'])}</td><td class='n'>{_fmt(r['gops'], 3)}</td>"
                       f"<td class='n'>{share * 100:.1f}%</td><td><div class='bar' style='width:{share * 200:.0f}px'>"
                       f"</div>{html.escape(r['note'])}</td></tr>")
        out.append("</table>")
    out.append(f"<h2>Graph</h2><div class='graph'>{svg}</div></body></html>")
    return "\n".join(out)
