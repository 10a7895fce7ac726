"""MarchPlugin: the hook implementations every march plugin needs, written once.

A march distribution points its ``qframe`` entry point at an instance::

    plugin = MarchPlugin(spec="my_march.spec:SPEC", table="my_march.op_table")

``table`` names a module with ``lowerings()`` and ``fusion_patterns()``
functions returning lists.  Nothing is imported until the registry calls
the hooks.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from .hookspecs import hookimpl


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


class MarchPlugin:
    """Registers one march: its spec, its op-table rows and its fusion patterns."""

    def __init__(self, spec: str, table: str) -> None:
        self.spec_path = spec
        self.table_path = table

    @hookimpl
    def qframe_register_marches(self, register: Callable[..., None]) -> None:
        register(_resolve(self.spec_path))

    @hookimpl
    def qframe_register_lowerings(self, register: Callable[..., None]) -> None:
        for row in _resolve(self.table_path).lowerings():
            register(row)

    @hookimpl
    def qframe_register_fusion_patterns(self, register: Callable[..., None]) -> None:
        for pattern in _resolve(self.table_path).fusion_patterns():
            register(pattern)
