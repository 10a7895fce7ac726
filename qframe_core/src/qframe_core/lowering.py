"""Op lowerings and fusion patterns: a march's capabilities as data.

A march plugin registers one :class:`OpLowering` per op it knows — what
the op becomes in the QAT model and in the quantized model, the dtypes it
takes, its limits, or that it is unsupported and why.  prepare, convert,
model checks and error messages all read these records; nothing else in
the core knows what a march can do.

Op keys identify ops the same way in every table:

* a module class (``torch.nn.Conv2d``, a fused class, ``QuantStub``);
* a function (``torch.flatten``);
* ``"FloatFunctional.add"`` for a FloatFunctional method;
* ``"Tensor.view"`` for a tensor method.

Helpers at the bottom build the common rows, so a new march states only
what differs (cf. ``torch.ao.quantization.backend_config``).
"""

from __future__ import annotations

import enum
import operator
from typing import Any, Callable, Iterable, Optional, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from .dtype import QuantDType


class LoweringKind(enum.Enum):
    #: swapped for a QAT module at prepare and a quantized module at convert
    MODULE = "module"
    #: commutes with quantization (same scale, runs on integers as is): flatten, view, ReLU…
    PASSTHROUGH = "passthrough"
    #: listed by the march as not runnable
    UNSUPPORTED = "unsupported"


@attrs.frozen
class Limit:
    """A numeric limit on a module attribute, e.g. ``Limit("kernel_size", max=31)``.

    Tuple attributes are checked element-wise.  ``text`` is the rule as the
    op table states it, quoted in error messages.
    """

    attr: str
    min: Optional[int] = None
    max: Optional[int] = None
    text: str = ""

    def violated(self, module: nn.Module) -> Optional[str]:
        value = _find_attr(module, self.attr)
        if value is None:
            return None
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if not isinstance(v, int):
                continue
            if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
                bound = f"{self.min if self.min is not None else '-inf'} <= {self.attr} <= " \
                        f"{self.max if self.max is not None else 'inf'}"
                return f"{self.attr}={value} breaks {self.text or bound}"
        return None


@attrs.frozen
class Allowed:
    """An attribute that must take one of a few values, e.g. ``Allowed("mode", ("nearest",))``."""

    attr: str
    values: tuple
    text: str = ""

    def violated(self, module: nn.Module) -> Optional[str]:
        value = _find_attr(module, self.attr)
        if value is None or value in self.values:
            return None
        return f"{self.attr}={value!r} breaks {self.text or f'{self.attr} in {self.values}'}"


@attrs.frozen
class ProductLimit:
    """A bound on the product of a tuple attribute, e.g. ``ProductLimit("normalized_shape", max=16383)``."""

    attr: str
    max: int
    text: str = ""

    def violated(self, module: nn.Module) -> Optional[str]:
        value = _find_attr(module, self.attr)
        if value is None:
            return None
        values = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else (value,)
        product = 1
        for v in values:
            product *= int(v)
        if product > self.max:
            return f"{self.attr}={list(values)} (product {product}) breaks {self.text or f'product <= {self.max}'}"
        return None


@attrs.frozen
class InputProductLimit:
    """A bound on the product of some input dims, checked when the op runs (prepare sees no shapes).

    ``dims`` index the input shape (``(-2, -1)``: H * W of an [N, C, H, W] tensor); ``rank`` restricts the
    limit to inputs of that rank.  Modules that honour it read it from their op-table row.
    """

    dims: tuple[int, ...]
    max: int
    rank: Optional[int] = None
    text: str = ""

    def violated(self, module: nn.Module) -> Optional[str]:
        return None  # not a module attribute: see violated_by_shape

    def violated_by_shape(self, shape: tuple[int, ...]) -> Optional[str]:
        if self.rank is not None and len(shape) != self.rank:
            return None
        product = 1
        for d in self.dims:
            product *= int(shape[d])
        if product > self.max:
            return f"the product of dims {list(self.dims)} is {product}, which breaks {self.text or f'<= {self.max}'}"
        return None


def _find_attr(module: nn.Module, attr: str) -> Any:
    """Look ``attr`` up on the module, or on the conv/linear a fused module wraps."""
    for m in (module, getattr(module, "conv", None), getattr(module, "linear", None)):
        if m is not None and attr in dir(m):
            return getattr(m, attr)
    return None


@attrs.frozen
class OpLowering:
    """What one march does with one op.

    Attributes:
        march: the march name.
        op: the op key (see module docstring).
        kind: module swap, passthrough or unsupported.
        qat_module: class with ``from_float(float_module, qconfig, march)`` (MODULE only).
        quantized_module: class with ``from_qat(qat_module)`` (MODULE only).
        input_dtypes: activation dtypes the op accepts.
        output_dtypes: dtypes it may produce (``qint32`` = high-precision model output).
        limits: attribute limits of the op table.
        note: the op table's remark, or for UNSUPPORTED the reason.
        way_out: what the user can do instead (quoted in errors).
        output_only: the table's "只能作为模型输出": the result may only leave the model (through
            DeQuantStubs, indexing) and feed no other op.
    """

    march: str
    op: Any
    kind: LoweringKind = LoweringKind.MODULE
    qat_module: Optional[type] = None
    quantized_module: Optional[type] = None
    input_dtypes: tuple[QuantDType, ...] = ()
    output_dtypes: tuple[QuantDType, ...] = ()
    limits: tuple[Any, ...] = ()  # Limit / Allowed records
    note: str = ""
    way_out: str = ""
    output_only: bool = False

    @property
    def op_key(self) -> Any:
        return self.op

    @property
    def op_name(self) -> str:
        return op_display_name(self.op)

    def violations(self, module: Optional[nn.Module]) -> list[str]:
        """The limits ``module`` breaks (empty when it is fine)."""
        if module is None:
            return []
        return [v for v in (lim.violated(module) for lim in self.limits) if v is not None]


def op_display_name(op: Any) -> str:
    if isinstance(op, str):
        return op
    if isinstance(op, type):
        if getattr(nn, op.__name__, None) is op:  # torch.nn.modules.conv.Conv2d -> torch.nn.Conv2d
            return f"torch.nn.{op.__name__}"
        return f"{op.__module__}.{op.__qualname__}"
    name = getattr(op, "__name__", repr(op))
    for namespace, label in ((torch, "torch"), (F, "torch.nn.functional")):
        if getattr(namespace, name, None) is op:
            return f"{label}.{name}"
    mod = getattr(op, "__module__", None) or ""
    return f"{mod}.{name}" if mod else name


# -- functional aliases: the spellings of one op in PyTorch (not march specific) ----------------
#: op name -> callables / method names that mean it in a traced graph
OP_ALIASES: dict[str, dict[str, tuple]] = {
    "add": {"functions": (operator.add, torch.add, operator.iadd), "methods": ("add", "add_", "__add__"),
            "modules": ()},
    "relu": {"functions": (F.relu, torch.relu, torch.nn.functional.relu_), "methods": ("relu", "relu_"),
             "modules": (nn.ReLU,)},
    "relu6": {"functions": (F.relu6,), "methods": (), "modules": (nn.ReLU6,)},
}


@attrs.frozen
class FusionPattern:
    """An operator chain that fuses into one module.

    Attributes:
        name: unique per march, e.g. ``"conv2d_bn_add_relu"``.
        sequence: matchers in dataflow order; each is a module class or an
            :data:`OP_ALIASES` name (``"add"`` consumes the chain value as
            either operand and takes the other operand as an extra input).
        marches: marches the pattern applies to.
        fuser: ``fuser(modules, activation, has_add) -> nn.Module`` where
            ``modules`` lists the matched modules (None for functional matches).
    """

    name: str
    sequence: tuple
    marches: tuple[str, ...]
    fuser: Callable[..., nn.Module]

    @property
    def activation(self) -> Optional[str]:
        last = self.sequence[-1]
        for act in ("relu", "relu6"):
            if last == act or (isinstance(last, type) and last in OP_ALIASES[act]["modules"]):
                return act
        return None

    @property
    def has_add(self) -> bool:
        return "add" in self.sequence


# -- helpers that build the common rows ------------------------------------------------
def conv_fusion_patterns(
    marches: Sequence[str],
    head: type,
    norms: Sequence[type],
    fuser: Callable[..., nn.Module],
    prefix: str,
    with_add: bool = True,
) -> list[FusionPattern]:
    """Every ``head [-> norm] [-> add] [-> relu|relu6]`` chain (the head alone excluded)."""
    out: list[FusionPattern] = []
    norm_options: list[Optional[type]] = [None, *norms]
    add_options = [False, True] if with_add else [False]
    for norm in norm_options:
        for add in add_options:
            for act in (None, "relu", "relu6"):
                if norm is None and not add and act is None:
                    continue
                seq: list = [head]
                parts = [prefix]
                if norm is not None:
                    seq.append(norm)
                    parts.append(norm.__name__.lower())
                if add:
                    seq.append("add")
                    parts.append("add")
                if act is not None:
                    seq.append(act)
                    parts.append(act)
                out.append(FusionPattern("_".join(parts), tuple(seq), tuple(marches), fuser))
    return out


def module_lowerings(
    march: str,
    ops: Iterable[Any],
    qat_module: type,
    quantized_module: type,
    input_dtypes: Sequence[QuantDType],
    output_dtypes: Sequence[QuantDType],
    limits: Sequence[Limit] = (),
    note: str = "",
) -> list[OpLowering]:
    """The same swap rule for several op keys (e.g. Conv2d and all its fused forms)."""
    return [
        OpLowering(march, op, LoweringKind.MODULE, qat_module, quantized_module, tuple(input_dtypes),
                   tuple(output_dtypes), tuple(limits), note)
        for op in ops
    ]


def passthrough_lowerings(march: str, ops: Iterable[Any], dtypes: Sequence[QuantDType], note: str = "",
                          limits: Sequence[Any] = (), output_only: bool = False) -> list[OpLowering]:
    """Ops that run unchanged on integer tensors at the input's scale."""
    return [OpLowering(march, op, LoweringKind.PASSTHROUGH, input_dtypes=tuple(dtypes), output_dtypes=tuple(dtypes),
                       limits=tuple(limits), note=note, output_only=output_only) for op in ops]


def unsupported_lowerings(march: str, ops: Iterable[Any], reason: str, way_out: str) -> list[OpLowering]:
    """Ops the march's table lists as not supported, with the reason and the way out."""
    return [OpLowering(march, op, LoweringKind.UNSUPPORTED, note=reason, way_out=way_out) for op in ops]
