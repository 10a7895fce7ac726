"""The ``qframe`` command: ``qframe list`` and ``qframe quickstart``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from tabulate import tabulate

from .lowering import LoweringKind, op_display_name
from .registry import registry


def _list(args: argparse.Namespace) -> int:
    marches = registry.contributions("march")
    print("Marches")
    print(tabulate([(c.key, c.distribution, c.value.description) for c in marches],
                   headers=["name", "distribution", "description"]) if marches else "  (none installed)")
    observers = registry.contributions("observer")
    print("\nObservers")
    print(tabulate([(c.key, c.distribution, f"{c.value.cls.__module__}.{c.value.cls.__name__}") for c in observers],
                   headers=["name", "distribution", "class"]) if observers else "  (none installed)")
    patterns = registry.contributions("fusion_pattern")
    print("\nFusion patterns")
    print(tabulate([(c.key[1], c.key[0], c.distribution) for c in patterns],
                   headers=["pattern", "march", "distribution"]) if patterns else "  (none installed)")
    lowerings = registry.contributions("lowering")
    print("\nOp lowerings")
    rows = []
    for c in lowerings:
        low = c.value
        if low.kind is LoweringKind.MODULE:
            what = f"-> {low.quantized_module.__name__}"
        else:
            what = low.kind.value
        rows.append((op_display_name(low.op), low.march, what, ", ".join(map(str, low.input_dtypes)) or "-",
                     c.distribution))
    print(tabulate(rows, headers=["op", "march", "lowering", "input dtypes", "distribution"])
          if rows else "  (none installed)")
    tools = registry.contributions("tool")
    print("\nAnalysis tools")
    print(tabulate([(c.key, c.distribution, c.value.description) for c in tools],
                   headers=["name", "distribution", "description"]) if tools else "  (none installed)")
    broken, conflicts = registry.broken(), registry.conflicts()
    if broken:
        print("\nBroken plugins (skipped)")
        print(tabulate([(b.plugin, b.distribution, b.error) for b in broken], headers=["plugin", "distribution", "error"]))
    if conflicts:
        print("\nConflicts (unusable until one distribution is removed)")
        print(tabulate([(g[0].kind, g[0].key, ", ".join(c.distribution for c in g)) for g in conflicts],
                       headers=["kind", "name", "distributions"]))
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    marches = [args.march] if args.march else registry.march_names()
    if not marches:
        print("no march is installed: pip install qframe-march-bayes (or qframe-march-bernoulli2)", file=sys.stderr)
        return 2
    rows = []
    for m in marches:
        r = run_quickstart(m, epochs=args.epochs, qat_epochs=args.qat_epochs, seed=args.seed,
                           progress=not args.no_progress)
        rows.append((m, f"{r['float_acc']:.2f}", f"{r['calib_acc']:.2f}", f"{r['qat_acc']:.2f}",
                     f"{r['quantized_acc']:.2f}"))
    print("Digits (scikit-learn), top-1 accuracy on the 360-image test split")
    print(tabulate(rows, headers=["march", "float %", "calibrated %", "QAT %", "quantized (integer) %"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qframe", description="qframe: plugin-based quantization for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="show installed marches, observers, patterns, lowerings and tools")
    p_list.set_defaults(func=_list)
    p_qs = sub.add_parser("quickstart", help="float -> calibration -> QAT -> integer model on the digits data set")
    p_qs.add_argument("--march", default=None, help="march to use (default: every installed march)")
    p_qs.add_argument("--epochs", type=int, default=15, help="float training epochs")
    p_qs.add_argument("--qat-epochs", type=int, default=2, help="QAT epochs")
    p_qs.add_argument("--seed", type=int, default=0)
    p_qs.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_qs.set_defaults(func=_quickstart)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
