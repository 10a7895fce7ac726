"""What the composite integer ops (softmax, layernorm, GLU) share: inner tables, wide requantization, shape limits.

A composite op runs as a sequence of integer steps.  Its linear steps are exact
int64 sums and products requantized with the march's
:class:`~qframe_core.numerics.RequantRule`; its non-linear steps (exp, reciprocal,
rsqrt, sigmoid) are lookups in the march's table format
(:attr:`~qframe_core.march.MarchSpec.lookup`) between *intermediate grids*: each
intermediate value has a scale of its own, calibrated by a fake-quantize inside
the QAT module, and the march's widest activation dtype (qint16 on bayes).

Each inner table is built, like a single lookup's, at convert time (and in
VALIDATION state) from the calibrated scales.  Its *domain* — the input values
the op can feed it (``q - max(q) <= 0`` for softmax's exp, a sum of exps ``>= 1``
for its reciprocal, a variance ``>= 0`` for rsqrt) — is known, so inputs outside
it are clamped and the table's dense region, where its segments lie, covers only
values that occur.  Users may narrow it further with the op's ``*_kwargs``
(the seeds' ``layernorm_op.rsqrt_kwargs``):

``{"input_range": (lo, hi)}``
    the table input values (float, in the units of the function's argument) the
    table covers; outside, the function's value at the nearer end is used.  A
    narrower range puts the same number of segments on fewer codes: finer
    segments, more precise output where the data lies.
``{"auto_divide_strategy": "evenly"}``
    how the dense region is divided into segments; the march's
    :class:`~qframe_core.lookup.SegmentTable` has equal power-of-two segments, so
    ``"evenly"`` is the only strategy it has (the seeds' ``"curvature"`` division
    is refused with that explanation; use ``"input_range"``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import attrs
import torch

from ..dtype import QuantDType
from ..errors import UnsupportedOpError
from ..numerics import MAX_SHIFT, RequantRule
from ..quantization.fake_quantize import FakeQuantize, QuantParams

#: keys a ``*_kwargs`` table setting may hold
TABLE_KWARGS_KEYS = ("input_range", "auto_divide_strategy")

#: the division strategies this implementation of the table formats has
DIVIDE_STRATEGIES = ("evenly",)


def check_table_kwargs(kwargs: Optional[Mapping[str, Any]], owner: str, attr: str) -> dict[str, Any]:
    """Validate a ``*_kwargs`` setting (None means no setting); return it as a plain dict."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{owner}.{attr} must be a dict such as {{'input_range': (lo, hi)}}, got {kwargs!r}")
    unknown = sorted(set(kwargs) - set(TABLE_KWARGS_KEYS))
    if unknown:
        raise ValueError(f"{owner}.{attr}: unknown key(s) {unknown}; the inner table takes "
                         f"{list(TABLE_KWARGS_KEYS)}")
    out = dict(kwargs)
    strategy = out.get("auto_divide_strategy", "evenly")
    if strategy not in DIVIDE_STRATEGIES:
        raise ValueError(
            f"{owner}.{attr}: auto_divide_strategy={strategy!r} is not available: the march's segment table "
            f"divides its dense region into equal power-of-two segments ('evenly'); to make the segments finer "
            f"where the data lies, narrow the table with {{'input_range': (lo, hi)}}")
    if "input_range" in out:
        rng = out["input_range"]
        if not (isinstance(rng, (tuple, list)) and len(rng) == 2
                and all(isinstance(v, (int, float)) and not math.isnan(v) for v in rng) and rng[0] < rng[1]):
            raise ValueError(f"{owner}.{attr}: input_range must be (lo, hi) numbers with lo < hi, got {rng!r}")
        out["input_range"] = (float(rng[0]), float(rng[1]))
    return out


def table_domain(domain: tuple[float, float], kwargs: Mapping[str, Any]) -> tuple[float, float]:
    """The op's own domain for an inner table, narrowed by the user's ``input_range``."""
    lo, hi = domain
    if "input_range" in kwargs:
        lo, hi = max(lo, kwargs["input_range"][0]), min(hi, kwargs["input_range"][1])
        if not lo < hi:
            raise ValueError(f"input_range {kwargs['input_range']} does not meet the values the table can "
                             f"receive {domain}")
    return lo, hi


def build_inner_table(lookup: Any, fn: Callable[[torch.Tensor], torch.Tensor], domain: tuple[float, float],
                      inp: QuantParams, out: QuantParams, kwargs: Mapping[str, Any], what: str) -> Any:
    """The march's table for ``fn`` from the grid ``inp`` to the grid ``out``, inputs clamped to the domain."""
    if lookup is None:
        raise ValueError(f"{what}: the march declares no table-lookup rule")
    lo, hi = table_domain(domain, kwargs)

    def clamped(x: torch.Tensor) -> torch.Tensor:
        return fn(x.clamp(lo, hi))

    return lookup.build(clamped, inp, out, what=what)


def intermediate_dtype(activation_dtypes: Sequence[QuantDType]) -> QuantDType:
    """Intermediates use the march's widest activation dtype (qint16 on bayes)."""
    return max(activation_dtypes, key=lambda d: d.bits)


def intermediate_fake_quant(factory: Any, dtype: QuantDType, owner: str, scale: Optional[float] = None) -> FakeQuantize:
    """A per-tensor fake-quantize of ``dtype`` built like the op's activation fake-quantize (same class and
    observer), for an intermediate; ``scale`` fixes it.  A fixed-scale output qconfig does not fix the
    intermediates: they calibrate with ``"min_max"``."""
    proto = factory()
    if not isinstance(proto, FakeQuantize):
        raise TypeError(f"{owner}: the qconfig's activation factory must build a FakeQuantize, got "
                        f"{type(proto).__name__}")
    observer: Any = type(proto.activation_post_process)
    if proto.fixed_scale:
        observer = "min_max"
    kwargs = {"observer": observer, "dtype": dtype.name, "qscheme": torch.per_tensor_symmetric}
    averaging = getattr(proto.activation_post_process, "averaging_constant", None)
    if averaging is not None:
        kwargs["averaging_constant"] = averaging
    if scale is not None:
        return FakeQuantize(scale=scale, **kwargs)  # a fixed scale is never learned: the plain class
    return type(proto)(**kwargs)


#: products a requantization multiplies stay below this, so a right shift of 62 or more rounds them to 0
PRODUCT_BITS = 61


@attrs.frozen
class WideRequant:
    """``round_shift(round_shift(v, pre_shift) * multiplier, shift [+ extra])``, saturated to the target dtype.

    Requantization of an int64 value whose magnitude may reach ``bound``:
    ``pre_shift`` drops low bits first (the march's rounding) just enough that
    ``v * multiplier`` stays below ``2**61``; ``multiplier / 2**shift`` is the
    march rule's integer form of ``ratio * 2**pre_shift``.  A per-row ``extra``
    right shift (a normalization exponent) may be added; the total is capped at
    62, which changes nothing (a product below ``2**61`` shifted by 62 or more rounds to 0).
    """

    pre_shift: int
    multiplier: int
    shift: int


def wide_requant_params(rule: RequantRule, ratio: float, bound: int, what: str) -> WideRequant:
    pre = max(0, int(bound).bit_length() + (rule.multiplier_bits - 1) - PRODUCT_BITS)
    m, s = rule.multipliers(torch.tensor([[float(ratio) * 2.0 ** pre]], dtype=torch.float64), what=what)
    return WideRequant(pre, int(m[0, 0]), int(s[0]))


def wide_requant(v: torch.Tensor, p: WideRequant, rule: RequantRule, dtype: QuantDType,
                 extra_shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    v = v.to(torch.int64)
    if p.pre_shift:
        v = rule.round_shift(v, torch.tensor(p.pre_shift, device=v.device))
    shift = torch.tensor(p.shift, dtype=torch.int64, device=v.device)
    if extra_shift is not None:
        shift = (shift + extra_shift).clamp(0, MAX_SHIFT)
    return rule.requantize([(v, torch.tensor(p.multiplier, device=v.device))], shift, dtype)


#: bits of a normalized mantissa (it fits the intermediate int16 grid: ``2**(MANTISSA_BITS-1) <= M < 2**MANTISSA_BITS``)
MANTISSA_BITS = 15


def bit_length(v: torch.Tensor) -> torch.Tensor:
    """``floor(log2(v)) + 1`` of positive int64 values below ``2**53`` (exact: float64 holds them exactly)."""
    _, exponent = torch.frexp(v.to(torch.float64))
    return exponent.to(torch.int64)


def normalize(v: torch.Tensor, rule: RequantRule, even: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``v ≈ M * 2**k`` with the mantissa ``M`` in ``[2**14, 2**15)`` (``even``: ``k`` even, ``M`` in
    ``[2**13, 2**15)``), ``M = round_shift(v, k)`` by the march's rounding (``v << -k`` when ``k < 0``,
    exact).  ``v`` must be positive and below ``2**53``.  A mantissa rounded up to ``2**15`` becomes
    ``2**15 >> step`` with ``k + step`` (exact)."""
    k = bit_length(v) - MANTISSA_BITS
    step = 2 if even else 1
    if even:
        k = k + torch.remainder(k, 2)
    right = rule.round_shift(v, k.clamp(min=0))
    m = torch.where(k >= 0, right, torch.bitwise_left_shift(v, (-k).clamp(min=0)))
    top = m >= (1 << MANTISSA_BITS)
    m = torch.where(top, m >> step, m)
    return m, k + top.to(torch.int64) * step


def mantissa_table(lookup: Any, fn: Callable[[torch.Tensor], torch.Tensor], in_scale: float, domain: tuple[float, float],
                   kwargs: Mapping[str, Any], what: str) -> tuple[QuantParams, QuantParams, Any]:
    """A table of ``fn`` on normalized mantissas: input grid ``in_scale`` (qint16), output grid ``2**-14`` (qint16)."""
    from ..dtype import qint16

    inp = QuantParams(torch.tensor([in_scale]), qint16)
    out = QuantParams(torch.tensor([2.0 ** -14]), qint16)
    return inp, out, build_inner_table(lookup, fn, domain, inp, out, kwargs, what)


def scale_of(p: QuantParams) -> float:
    """A per-tensor scale as a Python float (float64 arithmetic on the float32 value)."""
    return float(p.scale.double().reshape(-1)[0])


def shape_limits(march: str, op: Any) -> tuple[Any, ...]:
    """The march table's limits on ``op``'s input shape (records with ``violated_by_shape``), checked at run time."""
    from ..registry import registry  # not at import: the registry loads plugins

    lowering = registry.lowering(march, op)
    if lowering is None:
        return ()
    return tuple(lim for lim in lowering.limits if hasattr(lim, "violated_by_shape"))


def check_shape(limits: Sequence[Any], shape: Sequence[int], name: str, op_name: str, march: str) -> None:
    """Raise :class:`UnsupportedOpError` naming module, op, march and rule when ``shape`` breaks a limit."""
    for lim in limits:
        broken = lim.violated_by_shape(tuple(shape))
        if broken:
            raise UnsupportedOpError(
                f"{name!r} ({op_name}): input shape {list(shape)}: {broken} (march {march!r} op table). Way out: "
                f"reshape or split the input to fit the limit, or run the op on the CPU "
                f"(prepare_qat_fx(..., hybrid=True)) or after the DeQuantStub")
