"""``visualize_model``: the integer graph as a self-contained SVG (no graphviz needed).

Layout: a node's rank is the longest path from the model inputs; ranks are rows
from top to bottom, nodes placed left to right within a row in execution order,
so no two nodes overlap.  Edges are cubic curves from the bottom of the producer
to the top of the consumer, with an arrow head.
"""

from __future__ import annotations

import os
import webbrowser
from typing import Optional, Union
from xml.sax.saxutils import escape

from torch import nn

from . import graph as g
from .check import InputSource, _short, inspect

_CHAR_W, _LINE_H, _PAD, _GAP_X, _GAP_Y, _MARGIN = 6.6, 14, 8, 24, 46, 20
_FILL = {"input": "#e8f1fb", "output": "#e8f1fb", g.INTEGER: "#e9f7ec", g.PASSTHROUGH: "#f3f3f3",
         g.LAYOUT: "#f3f3f3", g.FLOAT: "#fde8e8", g.UNLISTED: "#fde8e8", g.QAT: "#fde8e8", g.FOREIGN: "#fde8e8"}


def _nodes(dg: g.DeployGraph) -> list[tuple[str, str, list[str]]]:
    """``(id, kind, label lines)`` for inputs, ops and outputs."""
    out = []
    for i, v in enumerate(dg.graph_inputs):
        info = g.tensor_info(v)
        out.append((f"in{i}", "input", [f"input {i}: {v.debugName()}", str(info) if info else "?"]))
    for layer in dg.layers:
        outs = ", ".join(str(o) for o in layer.output_info if o is not None) or "-"
        out.append((f"L{layer.index}", layer.kind, [_short(layer.op), layer.name, outs]))
    for i, v in enumerate(dg.graph_outputs):
        info = g.tensor_info(v)
        out.append((f"out{i}", "output", [f"output {i}", str(info) if info else "?"]))
    return out


def render_svg(dg: g.DeployGraph, title: str = "") -> str:
    """The SVG text of ``dg``: one ``<g class="node">`` per input/op/output, one ``<g class="edge">`` per edge."""
    nodes = _nodes(dg)
    edges = dg.edges()
    preds: dict[str, list[str]] = {n: [] for n, _, _ in nodes}
    for s, t in edges:
        preds[t].append(s)
    rank: dict[str, int] = {}
    for nid, _, _ in nodes:  # nodes are in execution order: producers come first
        rank[nid] = 1 + max((rank[p] for p in preds[nid] if p in rank), default=-1)
    for nid, kind, _ in nodes:  # outputs on the last row of their producers + 1 (already), inputs on row 0
        if kind == "input":
            rank[nid] = 0
    rows: dict[int, list] = {}
    for node in nodes:
        rows.setdefault(rank[node[0]], []).append(node)
    sizes = {nid: (max(len(line) for line in lines) * _CHAR_W + 2 * _PAD, len(lines) * _LINE_H + 2 * _PAD)
             for nid, _, lines in nodes}
    row_w = {r: sum(sizes[n[0]][0] for n in ns) + _GAP_X * (len(ns) - 1) for r, ns in rows.items()}
    width = max(row_w.values(), default=100) + 2 * _MARGIN
    pos: dict[str, tuple[float, float, float, float]] = {}
    y = _MARGIN + (24 if title else 0)
    for r in sorted(rows):
        x = (width - row_w[r]) / 2
        row_h = max(sizes[n[0]][1] for n in rows[r])
        for nid, _, _ in rows[r]:
            w, h = sizes[nid]
            pos[nid] = (x, y, w, h)
            x += w + _GAP_X
        y += row_h + _GAP_Y
    height = y - _GAP_Y + _MARGIN
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="11">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>']
    if title:
        parts.append(f'<text x="{_MARGIN}" y="{_MARGIN + 10}" font-size="13" font-weight="bold">{escape(title)}</text>')
    for s, t in edges:
        sx, sy, sw, sh = pos[s]
        tx, ty, tw, _ = pos[t]
        x1, y1, x2, y2 = sx + sw / 2, sy + sh, tx + tw / 2, ty
        bend = max(20.0, (y2 - y1) / 2)
        parts.append(f'<g class="edge" data-from="{s}" data-to="{t}"><path d="M {x1:.1f} {y1:.1f} C {x1:.1f} '
                     f'{y1 + bend:.1f} {x2:.1f} {y2 - bend:.1f} {x2:.1f} {y2:.1f}" fill="none" stroke="#555" '
                     f'marker-end="url(#arrow)"/></g>')
    for nid, kind, lines in nodes:
        x, y0, w, h = pos[nid]
        parts.append(f'<g class="node" id="{nid}" data-kind="{kind}"><title>{escape(" | ".join(lines))}</title>'
                     f'<rect x="{x:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h:.1f}" rx="5" '
                     f'fill="{_FILL.get(kind, "#fff")}" stroke="#333"/>')
        for i, line in enumerate(lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            parts.append(f'<text x="{x + _PAD:.1f}" y="{y0 + _PAD + (i + 1) * _LINE_H - 3:.1f}"{weight}>'
                         f'{escape(line)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def visualize_model(module: nn.Module, example_inputs: g.ExampleInputs, save_path: Union[str, os.PathLike] =
                    "model.svg", show: bool = False, march: Optional[str] = None,
                    input_source: InputSource = None) -> str:
    """Draw the integer graph of a converted model as an SVG file (the seeds' ``visualize_model``).

    One box per model input, op (integer module or op outside modules: its class/op, module path, output
    dtype and shape) and output, arrows for data flow, layered top to bottom by longest path from the
    inputs.  The model is checked first (a model the march cannot run raises as in :func:`check_model`).

    Args:
        save_path: where to write the SVG.
        show: open it with :mod:`webbrowser`.

    Returns:
        ``save_path``.
    """
    report = inspect(module, example_inputs, march, input_source, who="visualize_model")
    svg = render_svg(report.graph, f"{report.model} (march {report.march})")
    path = os.fspath(save_path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(svg)
    print(f"qframe model visualization written to {path}")
    if show:
        webbrowser.open("file://" + os.path.abspath(path))
    return path
