"""Fused float modules produced by ``fuse_fx``.

A fused module holds the conv/linear (with any BatchNorm folded into its
weight and bias) and applies, in order: the op, an optional residual add
(second forward argument), an optional ReLU/ReLU6.  The named subclasses
exist so a printed model says what was fused.
"""

from __future__ import annotations

import abc
import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def apply_activation(x: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    if activation == "relu":
        return F.relu(x)
    if activation == "relu6":
        return F.relu6(x)
    return x


class CalledAsAdd:
    """Eager-mode fusion of conv/linear + add puts the fused module at the add's position,
    where the forward calls ``.add(x, residual)``: such a call is a call of the module."""

    #: method names that mean "call this module" (read by the fx passes' op keys)
    forward_aliases: tuple[str, ...] = ("add",)

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self(x, other)


class _Fused(CalledAsAdd, nn.Module, abc.ABC):
    _qframe_leaf = True
    activation: Optional[str] = None
    has_add: bool = False

    @property
    @abc.abstractmethod
    def inner(self) -> nn.Module:
        """The conv/linear this module wraps."""

    def _finish(self, out: torch.Tensor, other: Optional[torch.Tensor]) -> torch.Tensor:
        if self.has_add:
            if other is None:
                raise ValueError(f"{type(self).__name__} fuses an add: call it with the residual as second argument")
            out = out + other
        return apply_activation(out, self.activation)


class FusedConv2d(_Fused):
    """Conv2d [+BN folded] [+add] [+ReLU|ReLU6]."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    @property
    def inner(self) -> nn.Module:
        return self.conv

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._finish(self.conv(x), other)


class FusedConvTranspose2d(FusedConv2d):
    """ConvTranspose2d [+BN folded] [+add] [+ReLU|ReLU6]."""


class FusedConv3d(FusedConv2d):
    """Conv3d [+BN3d folded] [+add] [+ReLU|ReLU6]."""


class FusedLinear(_Fused):
    """Linear [+BN1d folded] [+add] [+ReLU|ReLU6]."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    @property
    def inner(self) -> nn.Module:
        return self.linear

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._finish(self.linear(x), other)


def _variant(base: type, name: str, activation: Optional[str], has_add: bool) -> type:
    cls = type(name, (base,), {"activation": activation, "has_add": has_add, "__module__": __name__,
                               "__doc__": f"{base.__doc__.split('[')[0].strip()} fused with "
                                          f"{'add, ' if has_add else ''}{activation or 'no activation'}."})
    cls.__qualname__ = name
    return cls


ConvReLU2d = _variant(FusedConv2d, "ConvReLU2d", "relu", False)
ConvReLU62d = _variant(FusedConv2d, "ConvReLU62d", "relu6", False)
ConvAdd2d = _variant(FusedConv2d, "ConvAdd2d", None, True)
ConvAddReLU2d = _variant(FusedConv2d, "ConvAddReLU2d", "relu", True)
ConvAddReLU62d = _variant(FusedConv2d, "ConvAddReLU62d", "relu6", True)
ConvTransposeReLU2d = _variant(FusedConvTranspose2d, "ConvTransposeReLU2d", "relu", False)
ConvTransposeReLU62d = _variant(FusedConvTranspose2d, "ConvTransposeReLU62d", "relu6", False)
ConvTransposeAdd2d = _variant(FusedConvTranspose2d, "ConvTransposeAdd2d", None, True)
ConvTransposeAddReLU2d = _variant(FusedConvTranspose2d, "ConvTransposeAddReLU2d", "relu", True)
ConvTransposeAddReLU62d = _variant(FusedConvTranspose2d, "ConvTransposeAddReLU62d", "relu6", True)
ConvReLU3d = _variant(FusedConv3d, "ConvReLU3d", "relu", False)
ConvReLU63d = _variant(FusedConv3d, "ConvReLU63d", "relu6", False)
ConvAdd3d = _variant(FusedConv3d, "ConvAdd3d", None, True)
ConvAddReLU3d = _variant(FusedConv3d, "ConvAddReLU3d", "relu", True)
ConvAddReLU63d = _variant(FusedConv3d, "ConvAddReLU63d", "relu6", True)
LinearReLU = _variant(FusedLinear, "LinearReLU", "relu", False)
LinearReLU6 = _variant(FusedLinear, "LinearReLU6", "relu6", False)
LinearAdd = _variant(FusedLinear, "LinearAdd", None, True)
LinearAddReLU = _variant(FusedLinear, "LinearAddReLU", "relu", True)
LinearAddReLU6 = _variant(FusedLinear, "LinearAddReLU6", "relu6", True)

#: (head type, has_add, activation) -> fused class
FUSED_CLASSES: dict[tuple[type, bool, Optional[str]], type] = {
    (nn.Conv2d, False, "relu"): ConvReLU2d,
    (nn.Conv2d, False, "relu6"): ConvReLU62d,
    (nn.Conv2d, True, None): ConvAdd2d,
    (nn.Conv2d, True, "relu"): ConvAddReLU2d,
    (nn.Conv2d, True, "relu6"): ConvAddReLU62d,
    (nn.ConvTranspose2d, False, "relu"): ConvTransposeReLU2d,
    (nn.ConvTranspose2d, False, "relu6"): ConvTransposeReLU62d,
    (nn.ConvTranspose2d, True, None): ConvTransposeAdd2d,
    (nn.ConvTranspose2d, True, "relu"): ConvTransposeAddReLU2d,
    (nn.ConvTranspose2d, True, "relu6"): ConvTransposeAddReLU62d,
    (nn.Conv3d, False, "relu"): ConvReLU3d,
    (nn.Conv3d, False, "relu6"): ConvReLU63d,
    (nn.Conv3d, True, None): ConvAdd3d,
    (nn.Conv3d, True, "relu"): ConvAddReLU3d,
    (nn.Conv3d, True, "relu6"): ConvAddReLU63d,
    (nn.Linear, False, "relu"): LinearReLU,
    (nn.Linear, False, "relu6"): LinearReLU6,
    (nn.Linear, True, None): LinearAdd,
    (nn.Linear, True, "relu"): LinearAddReLU,
    (nn.Linear, True, "relu6"): LinearAddReLU6,
}

#: every fused float class, for lowering tables
FUSED_CONV2D = (ConvReLU2d, ConvReLU62d, ConvAdd2d, ConvAddReLU2d, ConvAddReLU62d)
FUSED_CONV_TRANSPOSE2D = (ConvTransposeReLU2d, ConvTransposeReLU62d, ConvTransposeAdd2d, ConvTransposeAddReLU2d,
                          ConvTransposeAddReLU62d)
FUSED_CONV3D = (ConvReLU3d, ConvReLU63d, ConvAdd3d, ConvAddReLU3d, ConvAddReLU63d)
FUSED_LINEAR = (LinearReLU, LinearReLU6, LinearAdd, LinearAddReLU, LinearAddReLU6)

#: the float ops a fused module can start with (the keys' first element above)
FUSABLE_HEADS = (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.Linear)


def swap_transposed_layout(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``[I, O/g, ...]`` (ConvTranspose's weight) <-> ``[O, I/g, ...]`` (output channels first).

    The same regrouping maps each layout to the other, so one function serves both ways."""
    a, b, *k = w.shape
    return w.reshape(groups, a // groups, b, *k).transpose(1, 2).reshape(groups * b, a // groups, *k)


def _fold_bn(head: nn.Module, bn: Optional[nn.Module]) -> nn.Module:
    if bn is None:
        return head
    if isinstance(head, nn.Linear):
        # a Linear followed by BatchNorm1d folds like a 1x1 conv
        w = head.weight
        b = head.bias if head.bias is not None else torch.zeros(w.shape[0], device=w.device)
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        fused = nn.Linear(head.in_features, head.out_features, bias=True).to(w.device)
        with torch.no_grad():
            fused.weight.copy_(w * (gamma / std).unsqueeze(1))
            fused.bias.copy_((b - bn.running_mean) * gamma / std + beta)
        return fused
    if isinstance(head, nn.ConvTranspose2d):
        # folded per output channel in the [O, I/groups, ...] layout (torch's fusion mishandles groups here)
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        b = head.bias if head.bias is not None else torch.zeros_like(std)
        fused = copy.deepcopy(head)
        if fused.bias is None:
            fused.bias = nn.Parameter(torch.zeros_like(std))
        w = swap_transposed_layout(head.weight.detach(), head.groups)
        w = w * (gamma / std).reshape(-1, *[1] * (w.dim() - 1))
        with torch.no_grad():
            fused.weight.copy_(swap_transposed_layout(w, head.groups))
            fused.bias.copy_((b - bn.running_mean) * gamma / std + beta)
        return fused
    head_training, bn_training = head.training, bn.training
    folded = fuse_conv_bn_eval(head.eval(), bn.eval())  # a new module; the user's are put back as they were
    head.train(head_training)
    bn.train(bn_training)
    folded.train(head_training)
    return folded


def fuse_chain(modules: list, activation: Optional[str], has_add: bool) -> nn.Module:
    """Build the fused module of a matched chain ``[head, bn or None, …]``.

    BatchNorm is folded into the head with its running statistics (the QAT
    model trains the folded weights; BN statistics are not updated further).
    """
    head = modules[0]
    bn = next((m for m in modules[1:] if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)
    head = _fold_bn(head, bn)
    base = next(t for t in FUSABLE_HEADS if isinstance(head, t))
    if not has_add and activation is None:
        return head
    return FUSED_CLASSES[(base, has_add, activation)](head)
