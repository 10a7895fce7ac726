"""qframe core: hookspecs, registry, dtypes, march setting, and the quantization workflow.

Importing this package loads no plugin; the registry loads them on first use.
The scoped setting is ``qframe_core.march.march(name)`` (a context manager).
"""

import importlib
from typing import Any

from .dtype import qint8, qint16, qint32
from .march import March, get_march, set_march
from .qtensor import QTensor

__version__ = "0.1.0"

__all__ = ["March", "QTensor", "__version__", "get_march", "qint8", "qint16", "qint32", "set_march"]

#: subpackages reachable as attributes without importing them first, as the seeds write them after
#: ``import horizon_plugin_pytorch as horizon`` (``horizon.quantization.fuse_fx(model)``)
_LAZY_SUBMODULES = {name: f".{name}" for name in ("errors", "functional", "jit", "nn", "quantization", "registry", "utils")}
#: the seeds' advanced guide also writes ``horizon.qconfig.default_calib_8bit_fake_quant_qconfig``
_LAZY_SUBMODULES["qconfig"] = ".quantization.qconfig"


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(_LAZY_SUBMODULES[name], __name__)
    raise AttributeError(f"module 'qframe_core' has no attribute {name!r}")
