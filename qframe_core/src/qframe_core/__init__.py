"""qframe core: hookspecs, registry, dtypes, march setting, and the quantization workflow.

Importing this package loads no plugin; the registry loads them on first use.
The scoped setting is ``qframe_core.march.march(name)`` (a context manager).
"""

from .dtype import qint8, qint16, qint32
from .march import March, get_march, set_march
from .qtensor import QTensor

__version__ = "0.1.0"

__all__ = ["March", "QTensor", "__version__", "get_march", "qint8", "qint16", "qint32", "set_march"]
