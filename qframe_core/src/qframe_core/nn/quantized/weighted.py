"""Integer Conv2d and Linear running on the march's kernel extension."""

from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import nn

from ...quantization.fake_quantize import QuantParams
from ..intrinsic import CalledAsAdd
from ..qat.weighted import WeightedIntParams
from . import ops
from .kernels import as_array, dtype_name, march_kernels, to_int32


def _version_key(w, b, m, s, r) -> tuple:
    """In-place versions and data pointers of the buffers a pack derives from (``.data =`` swaps storage
    without a version bump).  Straight-line code: it runs on every forward, when the buffers' metadata is
    out of cache after the previous kernel."""
    return (w._version, w.data_ptr(), b._version, b.data_ptr(),
            None if m is None else (m._version, m.data_ptr()), None if s is None else (s._version, s.data_ptr()),
            None if r is None else (r._version, r.data_ptr()))


class _WeightedQuantized(CalledAsAdd, nn.Module, abc.ABC):
    """Holds the integer parameters as buffers (what state_dict saves) and the
    weights packed for the march's GEMM kernels (a ``PackedWeight``, packed in
    ``from_qat`` and reused by every forward).  The pack is derived data: it
    is not saved, and it is rebuilt on first use after unpickling, deepcopy,
    ``load_state_dict`` or any in-place change of the ``weight`` buffer."""

    _qframe_leaf = True

    def __init__(self, p: WeightedIntParams, march: str, name: str) -> None:
        super().__init__()
        self.march = march
        self.qframe_name = name
        self.register_buffer("weight", p.weight.to(torch.int8).contiguous())
        self.register_buffer("bias", p.bias.to(torch.int32))
        self.register_buffer("multiplier", None if p.multiplier is None else p.multiplier.to(torch.int32))
        self.register_buffer("shift", None if p.shift is None else p.shift.to(torch.int32))
        self.register_buffer("residual_multiplier",
                             None if p.residual_multiplier is None else p.residual_multiplier.to(torch.int32))
        self.register_buffer("out_scale", p.output.scale.detach().clone().float())
        self.out_dtype = p.output.dtype
        self.out_ch_axis = p.output.ch_axis
        self.clamp_min = p.clamp_min
        self.clamp_max = p.clamp_max
        self._packed = None
        self._packed_key = None
        self._call_args = None

    @abc.abstractmethod
    def _pack(self, k):
        """The march's ``PackedWeight`` of the ``weight`` buffer."""

    def packed_weight(self):
        """The ``PackedWeight`` of the current ``weight`` buffer (packed once, repacked if it changed)."""
        return self._kernel_args()[1]

    def _kernel_args(self) -> tuple:
        """(kernels, PackedWeight, bias, multiplier, shift, residual_multiplier) as numpy views, built
        once and rebuilt when a buffer is replaced (identity) or changed in place (``_version_key``)."""
        bufs = self._buffers
        w, b, m, s, r = bufs["weight"], bufs["bias"], bufs["multiplier"], bufs["shift"], bufs["residual_multiplier"]
        key = self._packed_key
        if (key is not None and key[0] is w and key[1] is b and key[2] is m and key[3] is s and key[4] is r
                and key[5] == self.march and key[6] == _version_key(w, b, m, s, r)):
            return self._packed
        k = march_kernels(self.march)
        self._packed = (k, self._pack(k), to_int32(self.bias),
                        None if self.multiplier is None else self.multiplier.to(torch.int32).contiguous().numpy(),
                        None if self.shift is None else self.shift.to(torch.int32).contiguous().numpy(),
                        None if self.residual_multiplier is None
                        else self.residual_multiplier.to(torch.int32).contiguous().numpy())
        # the buffers are kept in the key: compared by identity, and a kept buffer cannot be freed and its
        # address reused
        self._packed_key = (w, b, m, s, r, self.march, _version_key(w, b, m, s, r))
        self._call_args = None
        return self._packed

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        state["_packed_key"] = None
        state["_call_args"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_packed", None)
        self.__dict__.setdefault("_packed_key", None)
        self.__dict__["_call_args"] = None

    def output_params(self) -> QuantParams:
        return QuantParams(self.out_scale, self.out_dtype, self.out_ch_axis)

    def _clamp_bounds(self) -> tuple[int, int]:
        lo = self.out_dtype.quant_min if self.clamp_min is None else self.clamp_min
        hi = self.out_dtype.quant_max if self.clamp_max is None else self.clamp_max
        return lo, hi

    def _finish(self, out) -> torch.Tensor:
        return self._finish_tensor(torch.from_numpy(out))

    def _finish_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if self.multiplier is None and self.clamp_min is not None:
            t = t.clamp_min(self.clamp_min)  # ReLU on a high-precision output
        return t


class Conv2d(_WeightedQuantized):
    """Integer Conv2d (+ fused residual add and ReLU/ReLU6 bounds).

    Takes NCHW or channels-last input.  Its output is NCHW-contiguous unless ``channels_last_output``
    is set — convert_fx sets it when every consumer accepts channels-last tensors — so chains of
    convs pass channels-last activations without copies (see the kernels README, "Layouts").
    """

    #: this module reads channels-last input without a copy (see convert_fx's layout pass)
    accepts_channels_last = True
    channels_last_output = False

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Conv2d:
        mod = cls(qat.integer_params(), qat.march, qat.qframe_name)
        mod.stride, mod.padding, mod.dilation, mod.groups = qat.stride, qat.padding, qat.dilation, qat.groups
        mod.packed_weight()
        return mod

    def _pack(self, k):
        return k.pack_conv2d_weight(self.weight.detach().contiguous().numpy(), int(self.groups))

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if torch.jit.is_tracing():  # record an operator call, not the kernel's result as a constant
            lo, hi = self._clamp_bounds()
            out = ops.conv2d(self.march, x, self.weight, self.bias, list(self.stride), list(self.padding),
                             list(self.dilation), int(self.groups), self.multiplier, self.shift,
                             dtype_name(self.out_dtype.bits), lo, hi, other, self.residual_multiplier,
                             self.qframe_name, self.channels_last_output)
            return self._finish_tensor(out)
        k, packed, bias, mult, shift, rmult = self._kernel_args()
        # the kernel call validated once per pack (the hot path of integer inference)
        args = self.__dict__.get("_call_args")
        if args is None:
            lo, hi = self._clamp_bounds()
            plan = k.conv2d_plan(packed, bias, tuple(self.stride), tuple(self.padding), tuple(self.dilation),
                                 int(self.groups), mult, shift, dtype_name(self.out_dtype.bits), lo, hi, rmult)
            args = self._call_args = (plan, {torch.int8: packed.native_layout("int8"),
                                             torch.int16: packed.native_layout("int16")},
                                      self.multiplier is None and self.clamp_min is not None)
        plan, natives, relu_on_raw = args
        out = ops.run_conv2d(plan, x, other, natives.get(x.dtype, "nchw"), self.channels_last_output,
                             self.qframe_name)
        return out.clamp_min(self.clamp_min) if relu_on_raw else out  # as _finish_tensor

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, out_dtype={self.out_dtype}, march={self.march}")


class Linear(_WeightedQuantized):
    """Integer Linear over the last axis (leading axes are batch)."""

    @classmethod
    def from_qat(cls, qat: nn.Module) -> nn.Module:
        if qat.has_add:  # the GEMM kernel takes no residual: the exact torch form
            from .weighted_exact import LinearAdd

            return LinearAdd.from_qat(qat)
        mod = cls(qat.integer_params(), qat.march, qat.qframe_name)
        mod.packed_weight()
        return mod

    def _pack(self, k):
        return k.pack_linear_weight(self.weight.detach().contiguous().numpy())

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if other is not None:
            raise TypeError(f"{self.qframe_name}: the integer Linear takes one input (a fused add converts to LinearAdd)")
        lo, hi = self._clamp_bounds()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if torch.jit.is_tracing():  # record an operator call, not the kernel's result as a constant
            out = ops.linear(self.march, x2, self.weight, self.bias, self.multiplier, self.shift,
                             dtype_name(self.out_dtype.bits), lo, hi, self.qframe_name)
            return self._finish_tensor(out).reshape(*lead, -1)
        k, packed, bias, mult, shift, _ = self._kernel_args()
        out = k.linear(
            as_array(x2, "input", self.qframe_name), packed, bias, mult, shift,
            dtype_name(self.out_dtype.bits), lo, hi,
        )
        return self._finish(out).reshape(*lead, -1)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, out_dtype={self.out_dtype}, march={self.march}"
