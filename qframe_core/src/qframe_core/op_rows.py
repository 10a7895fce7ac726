"""Rows every march table needs, built once: march plugins call these with their own dtypes and limits.

The functions return :class:`~qframe_core.lowering.OpLowering` /
:class:`~qframe_core.lowering.FusionPattern` lists mapping float ops to the
core's generic QAT and quantized modules; a march only states its dtypes,
limits and what it does not support.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

import torch
from torch import nn

from .dtype import QuantDType
from .lowering import (
    Allowed,
    FusionPattern,
    Limit,
    LoweringKind,
    OpLowering,
    conv_fusion_patterns,
    module_lowerings,
    passthrough_lowerings,
    unsupported_lowerings,
)
from .nn import intrinsic, qat, quantized
from .quantization.stubs import DeQuantStub, QuantStub

try:
    from torch.ao.quantization import DeQuantStub as TorchDeQuantStub
    from torch.ao.quantization import QuantStub as TorchQuantStub
except ImportError:  # pragma: no cover
    TorchQuantStub = TorchDeQuantStub = None  # type: ignore[assignment,misc]

#: ops that commute with symmetric quantization: they run unchanged on integer tensors
VALUE_PRESERVING_OPS: tuple = (
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.ReLU, nn.Flatten, torch.flatten, torch.relu,
    torch.nn.functional.relu, "Tensor.view", "Tensor.reshape", "Tensor.flatten", "Tensor.relu",
    "Tensor.contiguous", torch.reshape,
)

#: layout ops: they move or copy elements, so they too run unchanged on integer tensors
LAYOUT_OPS: tuple = (
    nn.ZeroPad2d, nn.ReplicationPad2d, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    torch.pixel_shuffle, torch.pixel_unshuffle,  # the same objects as F.pixel_shuffle / F.pixel_unshuffle
    operator.getitem, torch.split, torch.chunk, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    "Tensor.split", "Tensor.chunk", "Tensor.permute", "Tensor.transpose", "Tensor.squeeze", "Tensor.unsqueeze",
    "Tensor.expand", "Tensor.expand_as", "Tensor.repeat", "Tensor.view_as", "Tensor.reshape_as",
    torch.tile, "Tensor.tile",
)

#: selections: their results are input elements (max, topk values, gathered elements) or their
#: indices, computed on the integer codes (the order of codes is the order of the values)
REDUCE_SELECT_OPS: tuple = (torch.max, torch.min, "Tensor.max", "Tensor.min", "Tensor.values")
INDEX_SELECT_OPS: tuple = (torch.argmax, torch.argmin, "Tensor.argmax", "Tensor.argmin", "Tensor.indices")
GATHER_OPS: tuple = (torch.topk, "Tensor.topk", torch.gather, "Tensor.gather")


def stub_lowerings(march: str, dtypes: Sequence[QuantDType]) -> list[OpLowering]:
    """QuantStub/DeQuantStub (qframe's and torch.ao's)."""
    quant_ops = [QuantStub] + ([TorchQuantStub] if TorchQuantStub else [])
    dequant_ops = [DeQuantStub] + ([TorchDeQuantStub] if TorchDeQuantStub else [])
    return (module_lowerings(march, quant_ops, qat.QuantStub, quantized.Quantize, (), dtypes)
            + module_lowerings(march, dequant_ops, qat.DeQuantStub, quantized.DeQuantize, (*dtypes, *_int32(dtypes)), ()))


def _int32(dtypes: Sequence[QuantDType]) -> tuple[QuantDType, ...]:
    from .dtype import qint32

    return (qint32,) if qint32 not in dtypes else ()


def conv2d_lowerings(march: str, input_dtypes: Sequence[QuantDType], output_dtypes: Sequence[QuantDType],
                     limits: Sequence[Limit] = (), note: str = "") -> list[OpLowering]:
    """Conv2d and every fused Conv2d form."""
    return module_lowerings(march, (nn.Conv2d, *intrinsic.FUSED_CONV2D), qat.Conv2d, quantized.Conv2d,
                            input_dtypes, output_dtypes, limits, note)


def conv_transpose2d_lowerings(march: str, input_dtypes: Sequence[QuantDType], output_dtypes: Sequence[QuantDType],
                               limits: Sequence[Limit] = (), note: str = "") -> list[OpLowering]:
    """ConvTranspose2d and every fused ConvTranspose2d form."""
    return module_lowerings(march, (nn.ConvTranspose2d, *intrinsic.FUSED_CONV_TRANSPOSE2D), qat.ConvTranspose2d,
                            quantized.ConvTranspose2d, input_dtypes, output_dtypes, limits, note)


def conv3d_lowerings(march: str, input_dtypes: Sequence[QuantDType], output_dtypes: Sequence[QuantDType],
                     limits: Sequence[Limit] = (), note: str = "") -> list[OpLowering]:
    """Conv3d and every fused Conv3d form."""
    return module_lowerings(march, (nn.Conv3d, *intrinsic.FUSED_CONV3D), qat.Conv3d, quantized.Conv3d,
                            input_dtypes, output_dtypes, limits, note)


def batchnorm_lowerings(march: str, ops: Sequence[type], conv_class: type, dtypes: Sequence[QuantDType],
                        limits: Sequence[Limit] = ()) -> list[OpLowering]:
    """A standalone BatchNorm computed as a depthwise 1x1 convolution (the seeds: "底层调用 BpuConvolution")."""
    return module_lowerings(march, ops, qat.BatchNorm, conv_class, dtypes, dtypes, limits,
                            "a standalone BatchNorm runs as a depthwise 1x1 convolution (running statistics)")


def linear_lowerings(march: str, input_dtypes: Sequence[QuantDType], output_dtypes: Sequence[QuantDType],
                     limits: Sequence[Limit] = (), note: str = "") -> list[OpLowering]:
    """Linear and every fused Linear form (with an add: exact torch integer form, see ``LinearAdd``)."""
    ops = (nn.Linear, *intrinsic.FUSED_LINEAR)
    return module_lowerings(march, ops, qat.Linear, quantized.Linear, input_dtypes, output_dtypes, limits, note)


def linear_unsupported(march: str, reason: str, way_out: str) -> list[OpLowering]:
    return unsupported_lowerings(march, (nn.Linear, *intrinsic.FUSED_LINEAR), reason, way_out)


def float_functional_lowerings(march: str, methods: Sequence[str], dtypes: Sequence[QuantDType],
                               note: str = "") -> list[OpLowering]:
    """``FloatFunctional.<method>`` rows (``+``, ``-``, ``*``, ``torch.cat`` become these at prepare)."""
    return module_lowerings(march, [f"FloatFunctional.{m}" for m in methods], qat.FloatFunctional,
                            quantized.QFunctional, dtypes, dtypes, (), note)


def reduce_lowerings(march: str, method: str, dtypes: Sequence[QuantDType], allowed_dims: Sequence[tuple],
                     text: str) -> list[OpLowering]:
    """``sum``/``mean`` (FloatFunctional or functional): exact sums requantized; the table limits the dims."""
    return module_lowerings(march, (f"FloatFunctional.{method}",), qat.FloatFunctional, quantized.QFunctional,
                            dtypes, dtypes, (Allowed("reduce_dims", tuple(allowed_dims), text),))


def max_pool_lowerings(march: str, dtypes: Sequence[QuantDType], limits: Sequence[Limit] = ()) -> list[OpLowering]:
    """Max pooling selects elements: it runs unchanged on integer tensors."""
    return [OpLowering(march, op, LoweringKind.PASSTHROUGH, input_dtypes=tuple(dtypes), output_dtypes=tuple(dtypes),
                       limits=tuple(limits), note="selects input elements: same scale")
            for op in (nn.MaxPool2d, torch.nn.functional.max_pool2d)]


def avg_pool_lowerings(march: str, ops: Sequence[type], dtypes: Sequence[QuantDType],
                       limits: Sequence[Limit] = ()) -> list[OpLowering]:
    """AvgPool2d / AdaptiveAvgPool2d: exact window sums requantized by the march rule."""
    return module_lowerings(march, ops, qat.AvgPool2d, quantized.AvgPool2d, dtypes, dtypes, limits)


def clamp_lowerings(march: str, ops: Sequence[Any], dtypes: Sequence[QuantDType]) -> list[OpLowering]:
    """ReLU6 / Hardtanh / clamp / clip as standalone ops: integer clamps at the input's scale."""
    return module_lowerings(march, ops, qat.ScalePreserving, quantized.ScalePreserving, dtypes, dtypes,
                            note="bounds become round(bound / scale)")


def selection_lowerings(march: str, ops: Sequence[Any], dtypes: Sequence[QuantDType], note: str = "",
                        output_only: bool = False) -> list[OpLowering]:
    """max/min (values and indices), argmax/argmin, topk, gather: exact on the integer codes."""
    return passthrough_lowerings(march, ops, dtypes, note or "selects on the integer codes (order-preserving)",
                                 output_only=output_only)


def compare_lowerings(march: str, dtypes: Sequence[QuantDType]) -> list[OpLowering]:
    """eq/gt/ge/lt/le and their long names: exact comparison of dequantized codes; bool (qbool) output."""
    from .nn.compare import COMPARE_FUNCTIONS

    return module_lowerings(march, [f"torch.{n}" for n in COMPARE_FUNCTIONS], qat.Compare, quantized.Compare, dtypes,
                            (), note="output qbool; q_a * s_a vs q_b * s_b (or the constant) compared exactly")


def grid_lowerings(march: str, ops: Sequence[Any], dtypes: Sequence[QuantDType], limits: Sequence[Any] = (),
                   note: str = "") -> list[OpLowering]:
    """Element-wise ops whose result lies on the input's grid (abs, F.pad): computed on the codes, saturated."""
    return module_lowerings(march, ops, qat.ScalePreserving, quantized.ScalePreserving, dtypes, dtypes, limits, note)


def lookup_lowerings(march: str, modules: Sequence[type], functions: Sequence[str], dtypes: Sequence[QuantDType],
                     note: str = "computed by the march's lookup table") -> list[OpLowering]:
    """Non-linear ops computed by table lookup: module classes and functional names (``"exp"``…)."""
    keys = [*modules, *(f"torch.{name}" for name in functions)]
    return module_lowerings(march, keys, qat.LookupTable, quantized.LookupTable, dtypes, dtypes, note=note)


def layout_lowerings(march: str, dtypes: Sequence[QuantDType], ops: Sequence[Any] = LAYOUT_OPS) -> list[OpLowering]:
    """Padding with zeros/replicas, pixel/channel shuffles, slicing, split, permute, expand…"""
    return passthrough_lowerings(march, ops, dtypes, note="moves or copies elements: same scale")


def constant_pad_lowerings(march: str, dtypes: Sequence[QuantDType]) -> list[OpLowering]:
    """ConstantPad2d: the pad value becomes ``round(value / scale)`` on the input grid."""
    return module_lowerings(march, (nn.ConstantPad2d,), qat.ScalePreserving, quantized.ScalePreserving, dtypes, dtypes)


def prelu_lowerings(march: str, dtypes: Sequence[QuantDType]) -> list[OpLowering]:
    """PReLU: exact per-channel slopes (``q * m_pos`` or ``q * m_neg[c]``), no table needed."""
    return module_lowerings(march, (nn.PReLU,), qat.PReLU, quantized.PReLU, dtypes, dtypes)


def softmax_lowerings(march: str, input_dtypes: Sequence[QuantDType], output_dtypes: Sequence[QuantDType],
                      limits: Sequence[Any] = (), note: str = "") -> list[OpLowering]:
    """Softmax (``F.softmax``/``Tensor.softmax`` become it): exp table, exact sum, reciprocal table, product."""
    return module_lowerings(march, (nn.Softmax,), qat.Softmax, quantized.Softmax, input_dtypes, output_dtypes,
                            limits, note or "exp table, exact sum, reciprocal table, requantized product")


def layernorm_lowerings(march: str, input_dtypes: Sequence[QuantDType], output_dtypes: Sequence[QuantDType],
                        limits: Sequence[Any] = (), note: str = "") -> list[OpLowering]:
    """LayerNorm (``F.layer_norm`` becomes it): exact moments, rsqrt table, affine step like a conv's."""
    return module_lowerings(march, (nn.LayerNorm,), qat.LayerNorm, quantized.LayerNorm, input_dtypes, output_dtypes,
                            limits, note or "exact mean and variance, rsqrt table, quantized weight and bias")


def glu_lowerings(march: str, dtypes: Sequence[QuantDType], limits: Sequence[Any] = (),
                  note: str = "") -> list[OpLowering]:
    """GLU (``F.glu`` becomes it): ``a * sigmoid(b)`` with a sigmoid table and an exact product."""
    return module_lowerings(march, (nn.GLU,), qat.GLU, quantized.GLU, dtypes, dtypes, limits,
                            note or "sigmoid table, exact product")


def lstm_cell_lowerings(march: str, dtypes: Sequence[QuantDType], limits: Sequence[Any] = (),
                        note: str = "") -> list[OpLowering]:
    """LSTMCell: exact int8-weight linears, sigmoid/tanh tables, exact products; outputs ``(h, c)``."""
    return module_lowerings(march, (nn.LSTMCell,), qat.LSTMCell, quantized.LSTMCell, dtypes, dtypes, limits,
                            note or "exact linears, sigmoid/tanh tables, exact products; qint16 cell state")


def mha_lowerings(march: str, dtypes: Sequence[QuantDType], limits: Sequence[Any] = (),
                  note: str = "") -> list[OpLowering]:
    """MultiheadAttention (boolean masks): exact projections and matmuls, the integer softmax; outputs ``(out, weights)``."""
    return module_lowerings(march, (nn.MultiheadAttention,), qat.MultiheadAttention, quantized.MultiheadAttention,
                            dtypes, dtypes, limits, note or "exact projections and matmuls, integer softmax; boolean masks")


def upsample_lowerings(march: str, dtypes: Sequence[QuantDType], limits: Sequence[Any] = (),
                       mode_text: str = "mode in ('nearest', 'bilinear')") -> list[OpLowering]:
    """Resize: ``nn.Upsample``, ``UpsamplingNearest2d``, ``UpsamplingBilinear2d``, ``qframe_core.nn.Interpolate`` and
    constant-argument ``F.interpolate`` (prepare makes it an ``nn.Upsample``); the output keeps the input's scale.

    Nearest copies elements; bilinear is the march's fixed-point rule (``MarchSpec.bilinear``,
    :mod:`qframe_core.resize`).  ``limits`` may hold :mod:`qframe_core.resize` records checked on the actual
    sizes when the module runs (``ScaleRange``, ``ShapeLimit``) besides ``Limit``/``Allowed``.
    """
    from .nn.qat.resize import Upsample as QATUpsample
    from .nn.quantized.resize import Upsample as IntegerUpsample

    rules = (Allowed("mode", ("nearest", "bilinear"), mode_text), *limits)
    return module_lowerings(march, (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d), QATUpsample,
                            IntegerUpsample, dtypes, dtypes, rules,
                            "nearest copies elements; bilinear: fixed-point coordinates, exact 4-neighbour sum")


def grid_sample_lowerings(march: str, input_dtypes: Sequence[QuantDType], output_dtypes: Sequence[QuantDType],
                          limits: Sequence[Any] = (), note: str = "") -> list[OpLowering]:
    """``F.grid_sample`` (prepare makes a constant-argument call a ``qframe_core.nn.GridSample``): the march's
    fixed-point coordinates from the grid codes, exact neighbour sums; the output keeps the input's scale.

    ``input_dtypes`` covers every input (input and grid); a per-input rule is a
    :class:`qframe_core.grid_sample.InputDType` in ``limits``, checked with the shapes when the module runs.
    """
    from .nn.qat.grid_sample import GridSample as QATGridSample
    from .nn.quantized.grid_sample import GridSample as IntegerGridSample

    return module_lowerings(march, (torch.nn.functional.grid_sample,), QATGridSample, IntegerGridSample,
                            input_dtypes, output_dtypes, limits,
                            note or "fixed-point source coordinates from the grid codes, exact neighbour sum")


def roi_align_lowerings(march: str, input_dtypes: Sequence[QuantDType], output_dtypes: Sequence[QuantDType],
                        limits: Sequence[Any] = (), note: str = "") -> list[OpLowering]:
    """``qframe_core.nn.RoIAlign`` (and ``torchvision.ops.RoIAlign`` when torchvision is importable): quantized boxes
    to fixed-point corners, the march's bilinear weights, exact sums averaged by a fixed-point reciprocal."""
    from .nn.qat.roi_align import RoIAlign as QATRoIAlign
    from .nn.quantized.roi_align import RoIAlign as IntegerRoIAlign
    from .nn.roi_align import RoIAlign

    keys: list[Any] = [RoIAlign]
    try:  # pragma: no cover - torchvision is optional
        from torchvision.ops import RoIAlign as TorchvisionRoIAlign

        keys.append(TorchvisionRoIAlign)
    except ImportError:
        pass
    return module_lowerings(march, keys, QATRoIAlign, IntegerRoIAlign, input_dtypes, output_dtypes, limits,
                            note or "fixed-point box corners and samples, exact bilinear sums, averaged")


def multi_scale_roi_align_lowerings(march: str, input_dtypes: Sequence[QuantDType],
                                    output_dtypes: Sequence[QuantDType], limits: Sequence[Any] = (),
                                    note: str = "") -> list[OpLowering]:
    """``qframe_core.nn.MultiScaleRoIAlign`` (and ``torchvision.ops.MultiScaleRoIAlign`` when importable): each box's
    level from its exact integer code area, the integer RoIAlign of that level requantized onto the largest
    feature scale."""
    from .nn.qat.roi_align import MultiScaleRoIAlign as QATMultiScaleRoIAlign
    from .nn.quantized.roi_align import MultiScaleRoIAlign as IntegerMultiScaleRoIAlign
    from .nn.roi_align import MultiScaleRoIAlign

    keys: list[Any] = [MultiScaleRoIAlign]
    try:  # pragma: no cover - torchvision is optional
        from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign

        keys.append(TorchvisionMultiScaleRoIAlign)
    except ImportError:
        pass
    return module_lowerings(march, keys, QATMultiScaleRoIAlign, IntegerMultiScaleRoIAlign, input_dtypes,
                            output_dtypes, limits,
                            note or "integer box-area levels, per level the integer RoIAlign onto the largest scale")


def anchor_generator_lowerings(march: str, input_dtypes: Sequence[QuantDType], note: str = "") -> list[OpLowering]:
    """``qframe_core.nn.AnchorGenerator`` (and torchvision's when importable): float32 anchors from the inputs'
    shapes (the op table's output dtype); no output dtype is listed because the result is not quantized."""
    from .nn.anchor_generator import AnchorGenerator
    from .nn.qat.anchor_generator import AnchorGenerator as QATAnchorGenerator
    from .nn.quantized.anchor_generator import AnchorGenerator as IntegerAnchorGenerator

    keys: list[Any] = [AnchorGenerator]
    try:  # pragma: no cover - torchvision is optional
        from torchvision.models.detection.rpn import AnchorGenerator as TorchvisionAnchorGenerator

        keys.append(TorchvisionAnchorGenerator)
    except ImportError:
        pass
    return module_lowerings(march, keys, QATAnchorGenerator, IntegerAnchorGenerator, input_dtypes, (), (),
                            note or "float32 anchors from the shapes only (constant once the shapes are known)")


def value_preserving_lowerings(march: str, dtypes: Sequence[QuantDType], exclude: Sequence[Any] = ()) -> list[OpLowering]:
    ops = [op for op in VALUE_PRESERVING_OPS if op not in exclude]
    return passthrough_lowerings(march, ops, (*dtypes, *_int32(dtypes)),
                                 note="runs on the integer tensor at the input's scale")


def conv2d_patterns(marches: Sequence[str]) -> list[FusionPattern]:
    return conv_fusion_patterns(marches, nn.Conv2d, (nn.BatchNorm2d, nn.SyncBatchNorm), intrinsic.fuse_chain,
                                "conv2d")


def conv_transpose2d_patterns(marches: Sequence[str]) -> list[FusionPattern]:
    return conv_fusion_patterns(marches, nn.ConvTranspose2d, (nn.BatchNorm2d, nn.SyncBatchNorm),
                                intrinsic.fuse_chain, "conv_transpose2d")


def conv3d_patterns(marches: Sequence[str]) -> list[FusionPattern]:
    return conv_fusion_patterns(marches, nn.Conv3d, (nn.BatchNorm3d, nn.SyncBatchNorm), intrinsic.fuse_chain,
                                "conv3d")


def linear_patterns(marches: Sequence[str]) -> list[FusionPattern]:
    return conv_fusion_patterns(marches, nn.Linear, (nn.BatchNorm1d, nn.SyncBatchNorm), intrinsic.fuse_chain, "linear")
