"""Quantized data types: ``qint8``, ``qint16`` and ``qint32``.

A :class:`QuantDType` is a record of the integer range a quantized tensor
lives in.  They are symmetric, signed types with zero point 0 (see the
numeric contract in SPEC.md): the scale of a tensor with amax ``a`` is
``a / ((qmax - qmin) / 2)``.
"""

from __future__ import annotations

from typing import Union

import attrs
import torch


@attrs.frozen
class QuantDType:
    """A signed integer quantized type.

    Attributes:
        name: ``"qint8"``, ``"qint16"`` or ``"qint32"``.
        bits: storage width in bits.
        torch_dtype: the torch integer dtype a payload of this type is held in.
    """

    name: str
    bits: int
    torch_dtype: torch.dtype

    @property
    def quant_min(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def quant_max(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def __repr__(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


qint8 = QuantDType("qint8", 8, torch.int8)
qint16 = QuantDType("qint16", 16, torch.int16)
qint32 = QuantDType("qint32", 32, torch.int32)

_BY_NAME = {d.name: d for d in (qint8, qint16, qint32)}
_TORCH_ALIASES = {torch.qint8: qint8, torch.qint32: qint32, torch.int8: qint8, torch.int16: qint16,
                  torch.int32: qint32}

DTypeLike = Union[QuantDType, str, torch.dtype]


def as_quant_dtype(dtype: DTypeLike) -> QuantDType:
    """Normalise ``"qint8"``, ``torch.qint8`` or :data:`qint8` to a :class:`QuantDType`.

    Raises:
        ValueError: naming the accepted spellings when ``dtype`` is none of them.
    """
    if isinstance(dtype, QuantDType):
        return dtype
    if isinstance(dtype, str) and dtype in _BY_NAME:
        return _BY_NAME[dtype]
    if isinstance(dtype, torch.dtype) and dtype in _TORCH_ALIASES:
        return _TORCH_ALIASES[dtype]
    raise ValueError(
        f"unknown quantized dtype {dtype!r}: use qframe_core.dtype.qint8, qint16 or qint32 "
        f"(or the strings {sorted(_BY_NAME)})"
    )
