"""``compile_model``: the deployable artifact of a converted model, and ``load_compiled``.

The march's integer kernel extension is qframe's deployment runtime, so the
artifact is the traced integer model as a TorchScript program (its integer
kernels are the ``torch.ops.qframe.*`` operators), saved with
:func:`qframe_core.jit.save` under the file name the user gives, with a JSON
manifest in its extra files (:data:`MANIFEST`).  Compilation verifies that the
reloaded artifact reproduces the model's outputs bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ... import __version__
from ...errors import QframeError
from . import graph as g
from .check import CheckReport, InputSource, inspect

#: name of the manifest inside the artifact's ``_extra_files``
MANIFEST = "qframe_manifest.json"
FORMAT = "qframe-compiled-model"
FORMAT_VERSION = 1

Opt = Union[str, int]


class CompileError(QframeError):
    """The compiled artifact does not reproduce the model (or is not a qframe artifact)."""


def opt_level(opt: Opt, who: str = "compile_model") -> int:
    """``"O0"``..``"O3"`` or ``0``..``3`` as an int."""
    level: Any = opt
    if isinstance(opt, str):
        text = opt.strip().upper()
        level = text[1:] if text.startswith("O") else text
    try:
        value = int(level)
    except (TypeError, ValueError):
        value = -1
    if isinstance(opt, bool) or value not in (0, 1, 2, 3):
        raise ValueError(f"{who}: opt={opt!r} is not an optimization level; use 'O0'..'O3' or 0..3 (the seeds use "
                         f"compile_opt = 'O1')")
    return value


def digest(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 over each tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(_bytes(t).numpy().tobytes())
    return h.hexdigest()


def identical(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Same number of tensors, each with the same dtype, shape and bits."""
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(_bytes(x), _bytes(y))
                                    for x, y in zip(a, b))


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (so -0.0 != 0.0 and NaN payloads compare exactly)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _optimize(script: torch.jit.ScriptModule, level: int, inputs: tuple, reference: tuple
              ) -> tuple[torch.jit.ScriptModule, list[str]]:
    """Graph optimizations kept only where the outputs stay bit-identical."""
    applied: list[str] = []
    steps = []
    if level >= 1:
        steps.append(("freeze", lambda m: torch.jit.freeze(m.eval())))
    if level >= 2:
        steps.append(("optimize_for_inference", torch.jit.optimize_for_inference))
    for name, step in steps:
        try:
            with g.quiet_trace():
                candidate = step(script)
            ok = identical(g.run(candidate, inputs), reference)
        except Exception as exc:  # an optimization that fails is skipped, loudly
            warnings.warn(f"compile_model: optimization {name!r} failed ({type(exc).__name__}: {exc}); the artifact "
                          f"is kept without it", RuntimeWarning, stacklevel=3)
            continue
        if not ok:
            warnings.warn(f"compile_model: optimization {name!r} changed the model's outputs; the artifact is kept "
                          f"without it", RuntimeWarning, stacklevel=3)
            continue
        script, applied = candidate, [*applied, name]
    return script, applied


def _io(values: list, tensors: Sequence[torch.Tensor], prefix: str, sources: Optional[list[str]] = None) -> list[dict]:
    out = []
    for i, t in enumerate(tensors):
        name = re.sub(r"\.\d+$", "", values[i].debugName()) if i < len(values) else f"{prefix}{i}"
        entry: dict[str, Any] = {"name": name if prefix == "input" else f"output_{i}", "shape": list(t.shape),
                                 "dtype": str(t.dtype).replace("torch.", "")}
        if sources is not None:
            entry["input_source"] = sources[i]
        out.append(entry)
    return out


def weight_bytes(report: CheckReport) -> int:
    dg = report.graph
    seen, total = set(), 0
    for layer in dg.layers:
        for t in g.parameter_values(dg.script, layer):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def build_manifest(report: CheckReport, inputs: tuple, reference: tuple, opt: int, applied: list[str]) -> dict:
    dg = report.graph
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": report.model,
        "march": report.march,
        "qframe_version": __version__,
        "torch_version": torch.__version__,
        "opt": f"O{opt}",
        "optimizations": applied,
        "input_source": report.input_sources,
        "inputs": _io(dg.graph_inputs, inputs, "input", report.input_sources),
        "outputs": _io([], reference, "output"),
        "op_counts": report.op_counts(),
        "num_ops": len(report.layers),
        "macs": report.total_macs,
        "weight_bytes": weight_bytes(report),
        "example_input_sha256": digest(inputs),
        "output_sha256": digest(reference),
    }


def load_compiled(path: Union[str, os.PathLike]) -> tuple[torch.jit.ScriptModule, dict]:
    """``(runnable module, manifest)`` of an artifact written by :func:`compile_model`.

    Raises:
        CompileError: the file is a TorchScript program without qframe's manifest.
    """
    from ...jit import _ensure_ops, _quiet_torch_jit

    # not qframe_core.jit.load: the manifest carries the version and the check below words the warning for
    # compiled artifacts; jit.load would add its own version warning, and one ("not saved by
    # qframe_core.jit.save") before the CompileError for a plain TorchScript file
    _ensure_ops()  # registers torch.ops.qframe.*
    extra = {MANIFEST: ""}
    with _quiet_torch_jit():
        module = torch.jit.load(os.fspath(path), map_location="cpu", _extra_files=extra)
    raw = extra[MANIFEST]
    raw = raw.decode() if isinstance(raw, bytes) else raw
    if not raw:
        raise CompileError(f"load_compiled: {os.fspath(path)!r} has no {MANIFEST}: it is not an artifact written by "
                           f"qframe_core.quantization.compile_model. Way out: compile the model with compile_model")
    manifest = json.loads(raw)
    if manifest.get("format") != FORMAT:
        raise CompileError(f"load_compiled: {os.fspath(path)!r} is not a {FORMAT} (format "
                           f"{manifest.get('format')!r})")
    saved = str(manifest.get("qframe_version", ""))
    if saved.split(".")[:2] != __version__.split(".")[:2]:
        warnings.warn(f"load_compiled: {os.fspath(path)!r} was compiled with qframe {saved}, this is {__version__}; "
                      f"integer results may differ — compile the model again", UserWarning, stacklevel=2)
    return module, manifest


def compile_to_memory(module: nn.Module, example_inputs: g.ExampleInputs, march: Optional[str], input_source:
                      InputSource, opt: Opt, who: str) -> tuple[torch.jit.ScriptModule, dict, CheckReport, tuple]:
    """Check, trace and optimize: ``(compiled program, manifest, check report, reference outputs)``."""
    level = opt_level(opt, who)
    inputs = g.as_inputs(example_inputs, who)
    report = inspect(module, inputs, march, input_source, who=who)
    reference = g.run(module, inputs)
    script = report.graph.script
    if script is not module and not identical(g.run(script, inputs), reference):
        raise CompileError(f"{who}: the traced {report.model} does not reproduce the model's outputs on the example "
                           f"inputs (its forward has data-dependent control flow that tracing froze). Way out: keep "
                           f"such logic out of the deployed model, or trace it yourself and pass the ScriptModule")
    compiled, applied = _optimize(script, level, inputs, reference)
    return compiled, build_manifest(report, inputs, reference, level, applied), report, reference


def compile_model(module: nn.Module, example_inputs: g.ExampleInputs, hbm: Union[str, os.PathLike],
                  march: Optional[str] = None, input_source: InputSource = "ddr", opt: Opt = "O1") -> dict:
    """Compile a converted model into the deployable artifact ``hbm`` (the seeds' ``compile_model``).

    Runs :func:`check_model` (raising on any op the march cannot run), traces the model if needed, applies
    the graph optimizations of ``opt`` (``"O0"``..``"O3"`` or 0..3: O1 freezes weights into the program, O2+
    also runs ``torch.jit.optimize_for_inference``; each is kept only if the outputs stay bit-identical),
    and writes a TorchScript program with a JSON manifest (march, qframe version, opt, input sources, input
    and output names/shapes/dtypes, op counts, MACs, a sha256 of the outputs on the example inputs) to
    ``hbm``, whatever its extension.  The written file is then reloaded and must reproduce the model's
    outputs bit for bit.

    Returns:
        the manifest.

    Raises:
        ModelCheckError: as :func:`check_model`.
        CompileError: the artifact does not reproduce the model (the file is removed).
    """
    start = time.perf_counter()
    compiled, manifest, report, reference = compile_to_memory(module, example_inputs, march, input_source, opt,
                                                              "compile_model")
    write_artifact(compiled, manifest, hbm, g.as_inputs(example_inputs, "compile_model"), reference)
    print(f"consumed time {time.perf_counter() - start:.6f}")
    print("qframe model compilation SUCCESS")
    return manifest


def write_artifact(compiled: torch.jit.ScriptModule, manifest: dict, path: Union[str, os.PathLike],
                   inputs: tuple, reference: tuple) -> None:
    """Save, reload and verify bit-identical outputs (removing the file when they differ)."""
    from ...jit import save

    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    save(compiled, path, _extra_files={MANIFEST: json.dumps(manifest, indent=1)})
    loaded, _ = load_compiled(path)
    got = g.run(loaded, inputs)
    if not identical(got, reference):
        os.remove(path)
        raise CompileError(f"compile_model: the artifact written to {path!r} does not reproduce {manifest['model']}'s "
                           f"outputs bit for bit on the example inputs (output sha256 {digest(got)} != "
                           f"{manifest['output_sha256']}); the file was removed. This is a qframe bug: please report "
                           f"it with the model; compiling with opt='O0' may avoid it")
