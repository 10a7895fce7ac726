"""bayes's op table: the "Bayes" columns of the seeds' op tables (appendix)."""

import torch.nn.functional as F
from torch import nn

from qframe_core import op_rows
from qframe_core.dtype import qint8, qint16, qint32
from qframe_core.grid_sample import InputDType
from qframe_core.lowering import Allowed, InputProductLimit, Limit, ProductLimit
from qframe_core.nn import quantized
from qframe_core.nn.qat.attention import NoBiasKV
from qframe_core.nn.unary import LOOKUP_MODULES, UNARY_FUNCTIONS
from qframe_core.resize import RecomputeScaleFactor, ShapeLimit
from qframe_core.roi_align import BoxFormat, FeatureMaps

from .spec import NAME

ACT = (qint8, qint16)

#: non-empty subsets of the C, H, W axes of a [N, C, H, W] tensor
CHW_SUBSETS = [(1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]

CONV2D_LIMITS = (
    Limit("in_channels", max=8192, text="输入 channel<=8192"),
    Limit("out_channels", max=8192, text="out_channel<=8192"),
    Limit("kernel_size", min=1, max=31, text="kernel<32"),
    Limit("dilation", max=16, text="dilation<=16"),
    Limit("padding", max=256, text="padding<=256"),
)

CONV_TRANSPOSE2D_LIMITS = (
    Limit("in_channels", 1, 2048, "in_channel<=2048"),
    Limit("out_channels", 1, 2048, "1<=out_channel<=2048"),
    Limit("kernel_size", 2, 14, "weight H, W: 2<=H, W<=14"),
    Limit("stride", 1, 14, "1<=stride<=14"),
    Limit("output_padding", 0, 1, "0<=output_padding<=1"),
    Limit("dilation", 1, 1, "dilation=1"),
)

CONV3D_LIMITS = (
    Limit("in_channels", max=65536, text="C<=65536"),
    Limit("out_channels", max=65536, text="N, C<=65536"),
    Limit("stride", 1, 2, "stride: D, H, W 等于 1 或 2"),
    Limit("dilation", 1, 1, "dilation: 暂不支持"),
    Limit("groups", 1, 1, "group: 暂不支持"),
)

LINEAR_LIMITS = (
    Limit("in_features", max=8192, text="in_features <= 8192"),
    Limit("out_features", max=8192, text="out_features <= 8192"),
)

INTERPOLATE_LIMITS = (
    ShapeLimit((1, 2, 3), 1, 8192, "input_shape: [N, C, H, W], 1<=C, H, W<=8192"),
    Allowed("align_corners", (False, None), "align_corners 支持 False 和 None"),
    RecomputeScaleFactor(("bilinear",), "scale=[] 时要求 recompute_scale_factors 为 True"),
)

GRID_SAMPLE_LIMITS = (
    Allowed("mode", ("bilinear", "nearest"), "只支持 bilinear 和 nearest 插值"),
    Allowed("padding_mode", ("zeros", "border"), "padding 模式只支持 zeros 和 border"),
    InputDType(0, (qint8,), "input：qint8"),
    ShapeLimit((2, 3), 1, 1024, "输入 shape: [N, C, H, W], 1<=H, W<=1024"),
    InputProductLimit((-2, -1), 720 * 1024, rank=4, text="H*W<=720*1024"),
)

MULTI_SCALE_ROI_ALIGN_LIMITS = (
    FeatureMaps((qint8,), 5, "input：qint8; 1<=feature number<=5"),
    BoxFormat("bbox 仅支持 List[Tensor] 格式 shape:[1, box_num, 4]"),
)


ROI_ALIGN_LIMITS = (
    InputDType(0, (qint8,), "input：qint8"),
    BoxFormat("bbox 仅支持 List[Tensor] 格式 shape:[1, box_num, 4]"),
)


def lowerings():
    return [
        *op_rows.stub_lowerings(NAME, ACT),
        *op_rows.conv2d_lowerings(NAME, ACT, (qint8, qint16, qint32), CONV2D_LIMITS,
                                  note="qint16 input: the accumulation must fit int32"),
        *op_rows.conv_transpose2d_lowerings(NAME, (qint8,), (qint8, qint32), CONV_TRANSPOSE2D_LIMITS,
                                            note="kernel>=stride; pad<=kernel/stride; sumin (fused add) input int8"),
        *op_rows.conv3d_lowerings(NAME, (qint8,), (qint8, qint16, qint32), CONV3D_LIMITS,
                                  note="kernel D, H<=9, W<=8191; padding<=kernel/2; D, H, W strides equal"),
        *op_rows.batchnorm_lowerings(NAME, (nn.BatchNorm2d, nn.SyncBatchNorm), quantized.Conv2d, (qint8,),
                                     CONV2D_LIMITS[:2]),
        *op_rows.batchnorm_lowerings(NAME, (nn.BatchNorm3d,), quantized.Conv3d, (qint8,)),
        # the table lists qint8 output; qint32 is allowed as a high-precision model output
        *op_rows.linear_lowerings(NAME, (qint8,), (qint8, qint32), LINEAR_LIMITS),
        *op_rows.float_functional_lowerings(NAME, ("add", "sub", "mul", "add_scalar", "mul_scalar"), ACT,
                                            note="broadcast on all but N; operands must be tensors"),
        *op_rows.float_functional_lowerings(NAME, ("cat",), ACT, note="2<=input number<=1024"),
        *op_rows.float_functional_lowerings(NAME, ("matmul",), ACT, note="N<=4096, C, H, W<=8192"),
        *op_rows.reduce_lowerings(NAME, "mean", ACT, CHW_SUBSETS, "支持在 CHW 上求 mean"),
        *op_rows.reduce_lowerings(NAME, "sum", ACT, CHW_SUBSETS, "仅支持 HWC 三个维度的 sum"),
        *op_rows.max_pool_lowerings(NAME, (qint8,), (Limit("kernel_size", 1, 256, "1<=kernel<=256"),
                                                     Limit("stride", 1, 256, "1<=stride<=256"),
                                                     Limit("padding", 0, 255, "0<=padding<=255"))),
        *op_rows.avg_pool_lowerings(NAME, (nn.AvgPool2d,), ACT, (Limit("kernel_size", 1, 256, "1<=kernel<=256"),
                                                                 Limit("stride", 1, 256, "1<=stride<=256"),
                                                                 Limit("padding", 0, 256, "padding<=256"))),
        *op_rows.avg_pool_lowerings(NAME, (nn.AdaptiveAvgPool2d,), (qint8,)),
        *op_rows.clamp_lowerings(NAME, (nn.ReLU6, nn.Hardtanh, "torch.clamp", "torch.clip"), ACT),
        *op_rows.float_functional_lowerings(NAME, ("maximum", "minimum"), ACT, note="input, other: qint8, qint16"),
        # "参考 torch.acos: qint8, qint16, 底层查表实现"
        *op_rows.lookup_lowerings(NAME, LOOKUP_MODULES, tuple(UNARY_FUNCTIONS), ACT,
                                  note="segment table (piecewise linear, int16 capable); 底层查表实现，有精度风险"),
        *op_rows.layout_lowerings(NAME, ACT),
        # "torch.max: out: qint8, qint16 index: int32; index 只能作为模型输出"
        *op_rows.selection_lowerings(NAME, op_rows.REDUCE_SELECT_OPS, ACT),
        *op_rows.selection_lowerings(NAME, op_rows.INDEX_SELECT_OPS, ACT, output_only=True,
                                     note="indices on the integer codes; index 只能作为模型输出"),
        *op_rows.selection_lowerings(NAME, op_rows.GATHER_OPS, (*ACT, qint32)),
        *op_rows.compare_lowerings(NAME, ACT),
        *op_rows.grid_lowerings(NAME, ("torch.abs",), ACT, note="|q| saturated (abs(-32768) = 32767)"),
        *op_rows.grid_lowerings(NAME, (F.pad,), ACT, (Allowed("mode", ("constant", "replicate"), "不支持 reflect 模式"),)),
        # "只支持 nearest 和 billinear 插值模式。input_shape: [N, C, H, W], 1<=C, H, W<=8192，align_corners 支持 False
        # 和 None，scale=[] 时要求 recompute_scale_factors 为 True"; qint8 in and out
        *op_rows.upsample_lowerings(NAME, (qint8,), INTERPOLATE_LIMITS, "只支持 nearest 和 billinear 插值模式"),
        *op_rows.constant_pad_lowerings(NAME, ACT),
        *op_rows.prelu_lowerings(NAME, ACT),
        # "torch.nn.Softmax: qint8 -> qint8, qint16; 使用多次查表、求和等算子拼凑，精度风险较高"
        *op_rows.softmax_lowerings(NAME, (qint8,), ACT,
                                   note="exp table, exact sum, reciprocal table (int16 intermediates); 精度风险较高"),
        # "torch.nn.Layernorm: qint8 -> qint8, qint16; 底层使用多次查表拼凑 … rsqrt_kwargs …
        #  H * W <= 16384, normalized_shape H * W < 16384"
        *op_rows.layernorm_lowerings(NAME, (qint8,), ACT, (
            ProductLimit("normalized_shape", 16383, "normalized_shape H * W < 16384"),
            InputProductLimit((-2, -1), 16384, rank=4, text="H * W <= 16384")),
            note="exact moments, rsqrt table (rsqrt_kwargs), qint16 weight, qint32 bias; 精度风险较高"),
        # "torch.nn.GLU: 参考 torch.acos" (qint8, qint16; 底层查表实现)
        *op_rows.glu_lowerings(NAME, ACT, note="sigmoid segment table (int16 intermediate), exact product"),
        # "input：qint8 grid： qint8, qint16 -> qint8; 输入 shape: [N, C, H, W], 1<=H, W<=1024 且 H*W<=720*1024; grid 支持
        # qint8 和 qint16，只支持 bilinear 和 nearest 插值 padding 模式只支持 zeros 和 border"
        *op_rows.grid_sample_lowerings(NAME, ACT, (qint8,), GRID_SAMPLE_LIMITS),
        # "torchvision.ops.RoIAlign: qint8 -> qint8; bbox 仅支持 List[Tensor] 格式 shape:[1, box_num, 4]"; the feature map
        # is qint8, the boxes qint8 or qint16 (the table's input column is the feature map; qint16 keeps box precision)
        *op_rows.roi_align_lowerings(NAME, ACT, (qint8,), ROI_ALIGN_LIMITS),
        # "torchvision.ops.MultiScaleRoIAlign: 参考 torchvision.ops.RoIAlign" (qint8 -> qint8; "1<=feature number<=5;
        # bbox 仅支持 List[Tensor] 格式"): feature maps qint8 (1 to 5 of them, checked when it runs), boxes qint8/qint16
        *op_rows.multi_scale_roi_align_lowerings(NAME, ACT, (qint8,), MULTI_SCALE_ROI_ALIGN_LIMITS),
        # "torchvision.models.detection.rpn.AnchorGenerator: qint8,qint16,qint32,float32 -> float32; 支持输入
        # int8/int16/int32/float32, 输出 float32": the anchors read the inputs' shapes only
        *op_rows.anchor_generator_lowerings(NAME, (qint8, qint16, qint32)),
        # "torch.nn.LSTMCell: qint8, qint16 -> qint8, qint16; 输入是 2 维" (checked when it runs)
        *op_rows.lstm_cell_lowerings(NAME, ACT, note="input 2-D (输入是 2 维); int8 per-channel weights, exact "
                                     "linears, sigmoid/tanh segment tables, qint16 gates and cell state"),
        # "torch.nn.MultiheadAttention: qint8, qint16 in and out; 不支持 add_bias_kv、add_zero_attn 和 q k v embed_dim
        #  不一致的情况 … 底层查表算子与 mask 量化可能带来精度风险"; boolean masks lowered
        *op_rows.mha_lowerings(NAME, ACT, (
            NoBiasKV(), Allowed("add_zero_attn", (False,), "不支持 add_zero_attn"),
            Allowed("_qkv_same_embed_dim", (True,), "不支持 q k v embed_dim 不一致的情况")),
            note="boolean (or 0/-inf) masks; additive masks, is_causal refused; int8 weights, integer softmax"),
        *op_rows.value_preserving_lowerings(NAME, ACT),
    ]


def fusion_patterns():
    return (op_rows.conv2d_patterns([NAME]) + op_rows.conv_transpose2d_patterns([NAME])
            + op_rows.conv3d_patterns([NAME]) + op_rows.linear_patterns([NAME]))
