"""Integer ConvTranspose2d, Conv3d and Linear+add: built from the conv2d/requantize kernels, or exact torch.

They hold the same integer parameters as the kernel-backed Conv2d (per-output-channel int8
weight in conv2d's ``[O, I/groups, ...]`` layout, int32 bias, the march's multipliers and
shifts).  On int8/int16 CPU inputs ConvTranspose2d runs one stride-1 conv2d kernel call per
output phase, Conv3d (without a residual) one raw-int32 conv2d call per kernel depth tap,
requantized by the march kernel ``requantize``, and Linear+add one 1x1 conv2d call with the
residual.  Otherwise (other devices, traced models, a dilated ConvTranspose2d) they compute with
:func:`~qframe_core.nn.qat.weighted.integer_weighted` -- the function the QAT modules call in
VALIDATION state -- with exact accumulation (:func:`~qframe_core.numerics.exact_integer_op`:
float32 where every partial sum fits its mantissa, float64 below 2**53 otherwise).  Every path
gives the same numbers.
"""

from __future__ import annotations

import abc
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..intrinsic import CalledAsAdd, swap_transposed_layout
from ..qat.weighted import WeightedIntParams, integer_accumulate, integer_weighted
from . import ops
from .kernels import dtype_name, march_kernels, runs_on_kernels


class _ExactWeighted(CalledAsAdd, nn.Module, abc.ABC):
    _qframe_leaf = True
    channel_axis = 1
    #: the op's hyper-parameters copied from the QAT module
    op_attrs: tuple[str, ...] = ()

    def __init__(self, p: WeightedIntParams, march: str, name: str) -> None:
        super().__init__()
        self.march = march
        self.qframe_name = name
        self.register_buffer("weight", p.weight.to(torch.int8))
        self.register_buffer("bias", p.bias.to(torch.int32))
        self.register_buffer("multiplier", None if p.multiplier is None else p.multiplier.to(torch.int64))
        self.register_buffer("shift", None if p.shift is None else p.shift.to(torch.int64))
        self.register_buffer("residual_multiplier",
                             None if p.residual_multiplier is None else p.residual_multiplier.to(torch.int64))
        self.register_buffer("out_scale", p.output.scale.detach().clone().float())
        self.in_params = p.input
        self.residual_params = p.residual
        self.out_dtype = p.output.dtype
        self.out_ch_axis = p.output.ch_axis
        self.clamp_min = p.clamp_min
        self.clamp_max = p.clamp_max

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Any:
        mod = cls(qat.integer_params(), qat.march, qat.qframe_name)
        for attr in cls.op_attrs:
            setattr(mod, attr, getattr(qat, attr))
        return mod

    def output_params(self) -> QuantParams:
        return QuantParams(self.out_scale, self.out_dtype, self.out_ch_axis)

    @abc.abstractmethod
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The float op (conv_transpose2d / conv3d / linear) evaluated on integer codes held in floats."""

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.is_floating_point():
            raise TypeError(f"{self.qframe_name}: the integer {type(self).__name__} takes integer codes, got "
                            f"{x.dtype}: is a QuantStub missing before it?")
        if (other is None) != (self.residual_multiplier is None):
            raise ValueError(f"{self.qframe_name}: {'a' if other is None else 'no'} residual input expected")
        if other is None and self.multiplier is not None and x.is_cpu and not torch.jit.is_tracing():
            # the march kernel requantizes the exact accumulators (the rule of integer_weighted, in C++)
            acc = self._accumulators(x)
            lo, hi = self._clamp_bounds()
            out = march_kernels(self.march).requantize(
                acc.contiguous().numpy(), self.multiplier.to(torch.int32).numpy(), self.shift.to(torch.int32).numpy(),
                self.channel_axis, dtype_name(self.out_dtype.bits), lo, hi)
            return torch.from_numpy(out)
        p = WeightedIntParams(self.in_params, self.weight, self.bias, self.output_params(), self.multiplier,
                              self.shift, self.residual_params, self.residual_multiplier, self.clamp_min,
                              self.clamp_max)
        q = integer_weighted(self._op, x.to(torch.int64), p, None if other is None else other.to(torch.int64),
                             resolve_march(self.march).requant, self.channel_axis)
        return q.to(self.out_dtype.torch_dtype)

    def _accumulators(self, x: torch.Tensor) -> torch.Tensor:
        """The exact accumulators with bias (int64, or int32 where they fit) of a CPU input."""
        return integer_accumulate(self._op, x.to(torch.int64), self.weight, self.bias, self.channel_axis)

    def _clamp_bounds(self) -> tuple[int, int]:
        lo = self.out_dtype.quant_min if self.clamp_min is None else max(self.out_dtype.quant_min, self.clamp_min)
        hi = self.out_dtype.quant_max if self.clamp_max is None else min(self.out_dtype.quant_max, self.clamp_max)
        return lo, hi

    def extra_repr(self) -> str:
        attrs = ", ".join(f"{a}={getattr(self, a, None)}" for a in self.op_attrs)
        return f"weight={tuple(self.weight.shape)}, {attrs}, out_dtype={self.out_dtype}, march={self.march}"


def transposed_phase(n_in: int, k: int, s: int, p: int, n_out: int, r: int) -> Optional[tuple]:
    """One axis of a transposed convolution's phase ``r`` (the outputs ``o`` with ``(o + p) % s == r``) as a
    stride-1 convolution: ``(taps, pad, first, count, start, kernel_index)``.

    Output ``o = q*s + r - p`` receives ``x[q - j] * w[r + j*s]``, so the phase is a correlation of the input
    with the kernel taps ``r + (taps-1-t)*s`` (indices ``>= k`` are zero taps; a phase without taps keeps one
    zero tap: bias only), padded by ``pad`` on both sides; its outputs ``first .. first+count-1`` are the
    transposed conv's outputs ``start, start+s, ...``.  None when the phase has no output."""
    taps = max(len(range(r, k, s)), 1)
    q_min, q_max = -((r - p) // s), (n_out - 1 + p - r) // s
    if q_max < q_min:
        return None
    pad = max(0, taps - 1 - q_min, q_max - n_in + 1)
    return (taps, pad, q_min - taps + 1 + pad, q_max - q_min + 1, q_min * s + r - p,
            [r + (taps - 1 - t) * s for t in range(taps)])


class ConvTranspose2d(_ExactWeighted):
    """Integer ConvTranspose2d (+ fused residual add and ReLU/ReLU6 bounds).

    int8/int16 CPU inputs (dilation 1) run as ``stride[0] * stride[1]`` stride-1 convolutions on the march's
    conv2d kernel, one per output phase (:func:`transposed_phase`): the same exact sums and the same
    requantization of each output, without the zeros a dilated input would multiply.  Other inputs and traced
    models take the exact torch arithmetic of the QAT module.
    """

    op_attrs = ("stride", "padding", "output_padding", "groups", "dilation")
    accepts_channels_last = True
    channels_last_output = False  # set by convert's layout pass (quantization/fx/layout.py)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = swap_transposed_layout(w, self.groups)  # stored output channels first: back to [I, O/groups, kh, kw]
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, self.groups,
                                  self.dilation)

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (x.dim() != 4 or not runs_on_kernels(x) or tuple(self.dilation) != (1, 1)
                or (other is not None and (other.dim() != 4 or not runs_on_kernels(other)))
                or (other is None) != (self.residual_multiplier is None)):
            return super().forward(x, other)
        n, _, h, w = x.shape
        kh, kw = self.weight.shape[2:]
        sh, sw = self.stride
        oh = (h - 1) * sh - 2 * self.padding[0] + kh + self.output_padding[0]
        ow = (w - 1) * sw - 2 * self.padding[1] + kw + self.output_padding[1]
        # the phases land in a channels-last buffer (runs of channels, as the kernels write them); NCHW-contiguous
        # at the end unless convert's layout pass let every consumer take channels-last
        out = torch.empty(n, self.weight.shape[0], oh, ow, dtype=self.out_dtype.torch_dtype,
                          memory_format=torch.channels_last)
        for ry in range(sh):
            ay = transposed_phase(h, kh, sh, self.padding[0], oh, ry)
            for rx in range(sw):
                ax = transposed_phase(w, kw, sw, self.padding[1], ow, rx)
                if ay is None or ax is None:
                    continue
                res = None
                if other is not None:  # the residual of this phase where the conv's outputs land
                    res = other.new_zeros(n, other.shape[1], h + 2 * ay[1] - ay[0] + 1, w + 2 * ax[1] - ax[0] + 1)
                    res[:, :, ay[2]:ay[2] + ay[3], ax[2]:ax[2] + ax[3]] = other[:, :, ay[4]::sh, ax[4]::sw]
                plan, natives = self._phase_plan(ay, ax)
                # the phase's conv output in the kernel's native layout (a channels-last view where that is
                # NHWC), copied into its strided place
                y = ops.run_conv2d(plan, x, res, natives.get(x.dtype, "nchw"), True, self.qframe_name)
                out[:, :, ay[4]::sh, ax[4]::sw] = y[:, :, ay[2]:ay[2] + ay[3], ax[2]:ax[2] + ax[3]]
        return out if self.channels_last_output else out.contiguous()

    def _phase_plan(self, ay: tuple, ax: tuple) -> tuple:
        """The march ``Conv2dPlan`` of a phase (its int8 weight: the kernel taps of :func:`transposed_phase`, zero
        beyond the kernel; the module's bias and requantization) and the native layouts of its packed weight,
        built once per phase and rebuilt when a parameter changes."""
        cache = self.__dict__.setdefault("_phases", {})
        key = (tuple(ay[5]), tuple(ax[5]), ay[1], ax[1])
        params = (self.weight, self.bias, self.multiplier, self.shift, self.residual_multiplier)
        versions = tuple(None if t is None else t._version for t in params)
        entry = cache.get(key)
        if entry is None or entry[0] != versions or any(a is not b for a, b in zip(entry[1], params)):
            kh, kw = self.weight.shape[2:]
            wp = self.weight.new_zeros(*self.weight.shape[:2], len(ay[5]), len(ax[5]))
            for t, ky in enumerate(ay[5]):
                for u, kx in enumerate(ax[5]):
                    if ky < kh and kx < kw:
                        wp[:, :, t, u] = self.weight[:, :, ky, kx]
            k = march_kernels(self.march)
            packed = k.pack_conv2d_weight(wp.numpy(), self.groups)
            lo, hi = self._clamp_bounds()

            def i32(t: Optional[torch.Tensor]) -> Any:
                return None if t is None else t.to(torch.int32).contiguous().numpy()
            plan = k.conv2d_plan(packed, i32(self.bias), (1, 1), (ay[1], ax[1]), (1, 1), self.groups,
                                 i32(self.multiplier), i32(self.shift), dtype_name(self.out_dtype.bits), lo, hi,
                                 i32(self.residual_multiplier))
            natives = {torch.int8: packed.native_layout("int8"), torch.int16: packed.native_layout("int16")}
            entry = cache[key] = (versions, params, (plan, natives))
        return entry[2]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_phases", None)
        return state


class Conv3d(_ExactWeighted):
    """Integer Conv3d (+ fused residual add and ReLU/ReLU6 bounds).

    Without a residual, int8/int16 CPU inputs accumulate on the march's conv2d kernel: one 2-D convolution per
    kernel depth tap over every input depth slice that tap reads (raw int32 sums, exact where they cannot
    saturate), summed over the taps and requantized by the march kernel ``requantize``.
    """

    op_attrs = ("stride", "padding", "dilation", "groups")

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def _accumulators(self, x: torch.Tensor) -> torch.Tensor:
        o, cg, kd = self.weight.shape[:3]
        taps_2d = cg * self.weight.shape[3] * self.weight.shape[4]
        bias_max = int(self.bias.abs().max()) if self.bias.numel() else 0
        if (x.dim() != 5 or not runs_on_kernels(x) or x.shape[2] == 0
                or (torch.iinfo(x.dtype).max + 1) * 128 * taps_2d * kd + bias_max >= 2 ** 31):
            return super()._accumulators(x)  # the sums could leave int32
        n, c, d = x.shape[:3]
        (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = self.stride, self.padding, self.dilation
        do = (d + 2 * pd - dd * (kd - 1) - 1) // sd + 1
        acc = None
        zero_bias = self.bias.new_zeros(o)
        for a in range(kd):
            # the output depths whose input depth od*sd - pd + a*dd lies inside the input
            lo = max(0, -((a * dd - pd) // sd))
            hi = min(do - 1, (d - 1 + pd - a * dd) // sd)
            if hi < lo:
                continue
            first = lo * sd - pd + a * dd
            xs = x[:, :, first:first + (hi - lo) * sd + 1:sd].transpose(1, 2).reshape(-1, c, *x.shape[3:])
            y = ops.conv2d_direct(self.march, xs, self._tap_weight(a), zero_bias, [sh, sw], [ph, pw], [dh, dw],
                                  self.groups, None, None, "int32", -2 ** 31, 2 ** 31 - 1, None, None, self.qframe_name,
                                  False)
            y = y.reshape(n, hi - lo + 1, o, *y.shape[2:])
            if acc is None:
                acc = torch.zeros(n, do, o, *y.shape[3:], dtype=torch.int32)
            acc[:, lo:hi + 1] += y
        if acc is None:  # no tap reads the input: the bias alone
            oh = (x.shape[3] + 2 * ph - dh * (self.weight.shape[3] - 1) - 1) // sh + 1
            ow = (x.shape[4] + 2 * pw - dw * (self.weight.shape[4] - 1) - 1) // sw + 1
            acc = torch.zeros(n, do, o, oh, ow, dtype=torch.int32)
        return (acc + self.bias.reshape(1, 1, -1, 1, 1)).transpose(1, 2).contiguous()

    def _tap_weight(self, a: int) -> torch.Tensor:
        """The int8 [O, I/groups, kh, kw] weight of depth tap ``a`` (kept for the packed-weight cache)."""
        cache = self.__dict__.setdefault("_taps", {})
        entry = cache.get(a)
        if entry is None or entry[0] != self.weight._version or entry[1] is not self.weight:
            entry = cache[a] = (self.weight._version, self.weight, self.weight[:, :, a].contiguous())
        return entry[2]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_taps", None)
        return state


class LinearAdd(_ExactWeighted):
    """Integer Linear fused with a residual add (+ ReLU/ReLU6) (``Linear.from_qat`` picks it): the linear kernel
    has no residual input, so int8/int16 CPU inputs run as a 1x1 convolution of ``[M, K, 1, 1]`` on the conv2d
    kernel, whose epilogue adds the residual (the same rule); other inputs compute exactly in torch."""

    channel_axis = -1

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (other is None or self.residual_multiplier is None or x.dim() < 2 or not runs_on_kernels(x, other)
                or self.multiplier is None):
            return super().forward(x, other)
        n, k = self.weight.shape
        lead = x.shape[:-1]
        w = self.__dict__.get("_w4")
        if w is None or w[0] is not self.weight or w[1] != self.weight._version:
            w = self.__dict__["_w4"] = (self.weight, self.weight._version, self.weight.reshape(n, k, 1, 1))
        res = other.expand(*lead, n).reshape(-1, n, 1, 1)
        lo, hi = self._clamp_bounds()
        out = ops.conv2d_direct(self.march, x.reshape(-1, k, 1, 1), w[2], self.bias, [1, 1], [0, 0], [1, 1], 1,
                                self.multiplier.to(torch.int32), self.shift.to(torch.int32),
                                dtype_name(self.out_dtype.bits), lo, hi, res, self.residual_multiplier.to(torch.int32),
                                self.qframe_name, False)
        return out.reshape(*lead, n)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_w4", None)
        return state
