"""TorchScript helpers: ``save``/``load`` that record qframe's version, and ``to_device``.

The integer kernels are registered torch operators (``torch.ops.qframe.*``),
so a traced integer model is a real TorchScript program; loading one needs
those operators registered, which :func:`load` guarantees by importing them
first.  :func:`save` stores qframe's version next to the program and
:func:`load` warns when the installed qframe's major/minor version differs.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import IO, Any, Iterator, Optional, Union

import torch

from . import __version__

_VERSION_KEY = "qframe_version"

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]


def _ensure_ops() -> None:
    from .nn.quantized import ops  # noqa: F401  (registers torch.ops.qframe.*)


@contextlib.contextmanager
def _quiet_torch_jit() -> Iterator[None]:
    """torch >= 2.10 marks torch.jit deprecated; the seeds' deployment flow still uses TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated.*", category=DeprecationWarning)
        yield


def save(m: torch.jit.ScriptModule, f: PathOrFile, _extra_files: Optional[dict[str, Any]] = None) -> None:
    """``torch.jit.save`` that also stores the qframe version."""
    extra = dict(_extra_files or {})
    extra[_VERSION_KEY] = __version__
    with _quiet_torch_jit():
        torch.jit.save(m, f, _extra_files=extra)


def _compatible(saved: str, current: str) -> bool:
    return saved.split(".")[:2] == current.split(".")[:2]


def load(f: PathOrFile, map_location: Any = None, _extra_files: Optional[dict[str, Any]] = None) -> torch.jit.ScriptModule:
    """``torch.jit.load`` with qframe's operators registered; warns on a version mismatch.

    As with ``torch.jit.load``, each key of ``_extra_files`` is set to that extra file's contents (``bytes``;
    ``b""`` when the file has none by that name).  The version key is read too, and is added to the
    caller's dict only if it was asked for.
    """
    _ensure_ops()
    extra = dict(_extra_files or {})
    extra.setdefault(_VERSION_KEY, "")
    with _quiet_torch_jit():
        module = torch.jit.load(f, map_location=map_location, _extra_files=extra)
    if _extra_files is not None:
        for key in list(_extra_files):
            _extra_files[key] = extra[key]
    saved = extra[_VERSION_KEY]
    saved = saved.decode() if isinstance(saved, bytes) else str(saved)
    if not saved:
        warnings.warn("qframe_core.jit.load: this file was not saved by qframe_core.jit.save; its qframe version is "
                      "unknown", UserWarning, stacklevel=2)
    elif not _compatible(saved, __version__):
        warnings.warn(f"qframe_core.jit.load: saved with qframe {saved}, loading with {__version__}; integer results "
                      f"may differ — re-export the model with this version", UserWarning, stacklevel=2)
    return module


def to_device(module: torch.jit.ScriptModule, device: Union[str, torch.device]) -> torch.jit.ScriptModule:
    """Move a traced module to ``device``, rewriting the device constants baked into its graphs."""
    dev = str(torch.device(device))
    seen = set()
    for sub in module.modules():
        for method_name in ("forward",):
            graph = getattr(getattr(sub, method_name, None), "graph", None)
            if graph is None or id(graph) in seen:
                continue
            seen.add(id(graph))
            for node in graph.nodes():
                if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
                    node.s_("value", dev)
    return module.to(dev)
