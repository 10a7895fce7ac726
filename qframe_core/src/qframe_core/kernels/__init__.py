"""Header-only C++ integer kernel library shared by the march extensions.

The headers under ``include/qframe_kernels/`` implement the integer conv2d,
linear, add and requantize kernels once, as templates over a march Policy
(multiplier width and rounding); each march's ``_kernels`` extension
instantiates them.  See ``README.md`` next to this file for the numeric
contract.
"""

from .build import get_include

__all__ = ["get_include"]
