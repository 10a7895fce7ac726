"""Generate each march's op-coverage table from the seeds' op tables ("支持的公版算子").

For every row of the seeds' tables it states what the seeds say for the march
(supported / 不支持 / unspecified, following "参考 X" references) and what the
installed march plugin does with the op (lowered, refused with the table's
reason, or not lowered yet).

    python scripts/op_coverage.py                 # print both tables
    python scripts/op_coverage.py --write         # refresh the tables in the march READMEs
    python scripts/op_coverage.py --check         # exit 1 if a README table is stale

The seeds are read from ``../shared/seeds`` (override with ``--seeds``).
"""

from __future__ import annotations

import argparse
import operator
import re
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from qframe_core.lowering import LoweringKind
from qframe_core.registry import registry

REPO = Path(__file__).resolve().parents[1]
TABLE = "appendix-eager-and-op-tables.zh.md"
START, END = "<!-- op-coverage:start -->", "<!-- op-coverage:end -->"
COLUMNS = {"bernoulli2": 2, "bayes": 5}  # index of the march's "input" column in a row


def seed_rows(seeds: Path) -> list[list[str]]:
    text = (seeds / TABLE).read_text(encoding="utf-8")
    text = text[text.index("## 支持的公版算子"):]
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|--") or line.startswith("|    算子") or \
                re.match(r"^\|\s*\|", line):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0]:
            rows.append(cells + [""] * (8 - len(cells)))
    return rows


def op_name(cell: str) -> str:
    name = cell.replace("(fused)", "").split("<br/>")[-1].strip()
    return name


def _nn_class(name: str) -> Optional[type]:
    for attr in dir(nn):
        if attr.lower() == name.lower():
            return getattr(nn, attr)
    return None


#: functional ops prepare turns into a module of another name (F.interpolate -> nn.Upsample)
FUNCTIONAL_MODULES: dict[str, type] = {"interpolate": nn.Upsample}


#: ops prepare rewrites into others: a / b -> a * reciprocal(b)
REWRITTEN: dict[str, tuple] = {"div": ("torch.reciprocal",)}


def candidate_keys(name: str) -> list[Any]:
    """Op-table keys qframe may list the seeds' op under."""
    if name.startswith("torchvision"):
        # qframe_core.nn mirrors the torchvision ops it lowers (torchvision itself is optional)
        from qframe_core import nn as qnn

        return [getattr(qnn, name.rsplit(".", 1)[-1], None)]
    if name.startswith("torch.Tensor."):
        m = name[len("torch.Tensor."):]
        if m == "__getitem__":
            return [operator.getitem]
        return [f"Tensor.{m}", f"torch.{m}", f"FloatFunctional.{m}"]
    if name.startswith("torch.nn.functional."):
        m = name[len("torch.nn.functional."):]
        # prepare turns some functional forms into their modules (F.relu6 -> nn.ReLU6)
        return [getattr(F, m, None), f"torch.{m}", _nn_class(m.replace("_", "")), FUNCTIONAL_MODULES.get(m)]
    if name.startswith("torch.quantization."):
        return [getattr(torch.ao.quantization, name.split(".")[-1], None)]
    if name.startswith("torch.nn."):
        return [_nn_class(name[len("torch.nn."):])]
    if name.startswith("torch."):
        m = name[len("torch."):]
        return [getattr(torch, m, None), f"FloatFunctional.{m}", f"torch.{m}", *REWRITTEN.get(m, ())]
    return []


def seeds_verdict(rows_by_name: dict[str, list[str]], row: list[str], march: str, depth: int = 0) -> str:
    cell = row[COLUMNS[march]]
    ref = re.match(r"参考\s*(\S+)", cell)
    if ref and depth < 5 and ref.group(1) in rows_by_name and rows_by_name[ref.group(1)] is not row:
        return seeds_verdict(rows_by_name, rows_by_name[ref.group(1)], march, depth + 1)
    if "不支持" in cell:
        return "不支持"
    return "supported" if cell else "unspecified"


def qframe_status(march: str, keys: list[Any]) -> str:
    for key in keys:
        if key is None:
            continue
        low = registry.lowering(march, key)
        if low is None:
            continue
        if low.kind is LoweringKind.UNSUPPORTED:
            return "refused"
        return "lowered" if low.kind is LoweringKind.MODULE else "passthrough"
    return "not yet"


def table(march: str, seeds: Path) -> str:
    rows = seed_rows(seeds)
    by_name = {op_name(r[0]): r for r in rows}
    lines = ["| seeds' op | seeds (" + march + ") | qframe | |", "| --- | --- | --- | --- |"]
    counts = {"ok": 0, "missing": 0, "extra": 0}
    for r in rows:
        name = op_name(r[0])
        verdict = seeds_verdict(by_name, r, march)
        status = qframe_status(march, candidate_keys(name))
        if verdict == "supported" and status in ("lowered", "passthrough"):
            mark, counts["ok"] = "✓", counts["ok"] + 1
        elif verdict == "不支持" and status in ("refused", "not yet"):
            mark, counts["ok"] = "✓ (refused)" if status == "refused" else "✓ (not run)", counts["ok"] + 1
        elif verdict == "不支持":
            mark, counts["extra"] = "beyond the table", counts["extra"] + 1
        elif status in ("lowered", "passthrough"):
            mark, counts["ok"] = "✓", counts["ok"] + 1
        elif verdict == "unspecified" and status == "refused":  # the table is silent; the plugin states its rule
            mark, counts["ok"] = "✓ (refused, table silent)", counts["ok"] + 1
        else:
            mark, counts["missing"] = "missing", counts["missing"] + 1
        lines.append(f"| `{name}` | {verdict} | {status} | {mark} |")
    summary = (f"{len(rows)} rows of the seeds' tables: {counts['ok']} agree, {counts['missing']} not lowered yet, "
               f"{counts['extra']} run although the table says 不支持.")
    return summary + "\n\n" + "\n".join(lines)


def replace_block(readme: Path, body: str) -> str:
    text = readme.read_text(encoding="utf-8")
    if START not in text:
        raise SystemExit(f"{readme}: no {START} marker")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=Path, default=REPO.parent / "shared" / "seeds")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for march in COLUMNS:
        body = table(march, args.seeds)
        readme = REPO / f"qframe_march_{march}" / "README.md"
        if args.write:
            readme.write_text(replace_block(readme, body), encoding="utf-8")
        elif args.check:
            if replace_block(readme, body) != readme.read_text(encoding="utf-8"):
                stale.append(str(readme))
        else:
            print(f"## {march}\n\n{body}\n")
    if stale:
        print("stale op-coverage tables (run python scripts/op_coverage.py --write): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
