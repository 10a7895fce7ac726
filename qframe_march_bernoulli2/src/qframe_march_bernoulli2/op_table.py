"""bernoulli2's op table: the "Bernoulli2" columns of the seeds' op tables (appendix)."""

import torch
import torch.nn.functional as F
from torch import nn

from qframe_core import op_rows
from qframe_core.dtype import qint8, qint16, qint32
from qframe_core.lowering import Limit, unsupported_lowerings
from qframe_core.nn import intrinsic, quantized
from qframe_core.nn.compare import COMPARE_FUNCTIONS
from qframe_core.resize import ScaleRange
from qframe_core.roi_align import BoxFormat, FeatureMaps

from .spec import NAME

ACT = (qint8,)

#: Tensor methods the table lists as 不支持 on bernoulli2
NOT_4D = ("Tensor.transpose", "Tensor.expand", "Tensor.repeat", "Tensor.reshape", "Tensor.tile", torch.tile)


def lowerings():
    return [
        *op_rows.stub_lowerings(NAME, ACT),
        # Conv2d: input qint8, output qint8 or qint32 (high-precision model output)
        *op_rows.conv2d_lowerings(NAME, ACT, (qint8, qint32)),
        *op_rows.conv_transpose2d_lowerings(NAME, ACT, ACT, (
            Limit("kernel_size", 2, 14, "2<=kernel<=14"), Limit("in_channels", 1, 2048, "channel<=2048"),
            Limit("out_channels", 1, 2048, "channel<=2048"), Limit("stride", 2, 4, "2<=stride<=4"),
            Limit("dilation", 1, 1, "dilation=(1, 1)")), note="padding H*W=[0, (kernel_h-1)/2] * [0, (kernel_w-1)/2]"),
        *unsupported_lowerings(NAME, (nn.Conv3d, *intrinsic.FUSED_CONV3D, nn.BatchNorm3d),
                               "Conv3d is not supported on bernoulli2 (op table: 不支持)",
                               "keep it outside the quantized region, or target bayes"),
        *op_rows.batchnorm_lowerings(NAME, (nn.BatchNorm2d, nn.SyncBatchNorm), quantized.Conv2d, ACT),
        *op_rows.linear_unsupported(
            NAME, "torch.nn.Linear is not supported on bernoulli2 (op table: 不支持)",
            "use a 1x1 Conv2d on a [N, C, 1, 1] tensor (bernoulli2 computes 4-D tensors), or keep the Linear after "
            "the DeQuantStub"),
        *op_rows.float_functional_lowerings(NAME, ("add", "sub", "mul", "add_scalar", "mul_scalar"), ACT,
                                            note="in_channel<=2048; operands must be tensors"),
        *op_rows.float_functional_lowerings(NAME, ("cat",), ACT, note="input shape [N, C, H, W]"),
        *op_rows.float_functional_lowerings(NAME, ("matmul",), ACT, note="input shape [N, C, H, W]"),
        *op_rows.reduce_lowerings(NAME, "mean", ACT, [(1,)], "只支持在 channel 方向的 mean (dim=1)"),
        *op_rows.reduce_lowerings(NAME, "sum", ACT, [(0,), (1,), (0, 1)], "只支持 batch 和 channel 方向的 sum"),
        *op_rows.max_pool_lowerings(NAME, ACT, (Limit("kernel_size", 1, 64, "1<=kernel<=64"),
                                                Limit("stride", 1, 256, "1<=stride<=256"))),
        *op_rows.avg_pool_lowerings(NAME, (nn.AvgPool2d,), ACT, (Limit("kernel_size", 1, 7, "1<=kernel<=7"),
                                                                 Limit("stride", 1, 185, "1<=stride<=185"))),
        *unsupported_lowerings(NAME, (nn.AdaptiveAvgPool2d,),
                               "AdaptiveAvgPool2d is not supported on bernoulli2 (op table: 不支持)",
                               "use an AvgPool2d with the kernel equal to the input size, or pool after the "
                               "DeQuantStub"),
        *op_rows.clamp_lowerings(NAME, (nn.ReLU6,), ACT),
        # "torch.exp: qint8, 使用查表拼凑"; Sigmoid, Tanh, SiLU, GELU refer to torch.exp
        *op_rows.lookup_lowerings(NAME, (nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU), ("exp", "sigmoid", "tanh", "silu", "gelu"),
                                  ACT, note="256-entry table indexed by the int8 input (使用查表拼凑)"),
        *unsupported_lowerings(
            NAME, (nn.ELU, nn.SELU, nn.Softplus, nn.Hardsigmoid, nn.Hardswish, nn.Mish, nn.LeakyReLU,
                   *(f"torch.{n}" for n in ("log", "sqrt", "rsqrt", "reciprocal", "erf", "sin", "cos", "tan", "asin",
                                            "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "ceil",
                                            "floor", "elu", "selu", "softplus", "hardsigmoid", "hardswish", "mish", "pow",
                                            "leaky_relu"))),
            "not supported on bernoulli2 (op table: 不支持)", "run it after the DeQuantStub, or target bayes"),
        *op_rows.layout_lowerings(NAME, ACT, [op for op in op_rows.LAYOUT_OPS if op not in NOT_4D]),
        *unsupported_lowerings(NAME, NOT_4D, "not supported on bernoulli2 (op table: 不支持; it computes 4-D tensors)",
                               "reshape after the DeQuantStub, or target bayes"),
        # "torch.max: qint8, 只能作为模型输出"; argmax/argmin "参考 torch.max"
        *op_rows.selection_lowerings(NAME, (torch.max, torch.argmax, torch.argmin, "Tensor.argmax", "Tensor.argmin",
                                            "Tensor.values", "Tensor.indices"), ACT, output_only=True,
                                     note="only as a model output (只能作为模型输出)"),
        *unsupported_lowerings(NAME, (torch.min, "Tensor.max", "Tensor.min", "torch.abs", F.pad, torch.topk,
                                      torch.gather, *(f"torch.{n}" for n in COMPARE_FUNCTIONS)),
                               "not supported on bernoulli2 (op table: 不支持)",
                               "compute it after the DeQuantStub (torch.max(x, dim) may end the model), or target bayes"),
        # "支持 nearest 和 billinear 插值模式。1/256<缩放比例<=256"; qint8 in and out
        *op_rows.upsample_lowerings(NAME, ACT, (ScaleRange(1 / 256, 256, text="1/256<缩放比例<=256"),),
                                    "支持 nearest 和 billinear 插值模式"),
        *op_rows.constant_pad_lowerings(NAME, ACT),
        *unsupported_lowerings(NAME, (nn.Softmax,), "torch.nn.Softmax is not supported on bernoulli2 (op table: 不支持)",
                               "apply softmax after the DeQuantStub (float), run it on the CPU with "
                               "prepare_qat_fx(..., hybrid=True), or target bayes"),
        *unsupported_lowerings(NAME, (nn.LayerNorm,), "torch.nn.LayerNorm is not supported on bernoulli2 (op table: 不支持)",
                               "normalize after the DeQuantStub (float), run it on the CPU with "
                               "prepare_qat_fx(..., hybrid=True), or target bayes"),
        *unsupported_lowerings(NAME, (nn.GLU,), "torch.nn.GLU is not supported on bernoulli2 (op table: 不支持)",
                               "apply it after the DeQuantStub (float), run it on the CPU with "
                               "prepare_qat_fx(..., hybrid=True), or target bayes"),
        *unsupported_lowerings(NAME, (F.grid_sample,),
                               "torch.nn.functional.grid_sample is not supported on bernoulli2 (op table: 不支持)",
                               "sample after the DeQuantStub (float), run it on the CPU with "
                               "prepare_qat_fx(..., hybrid=True), or target bayes"),
        *unsupported_lowerings(NAME, (nn.LSTMCell,), "torch.nn.LSTMCell is not supported on bernoulli2 (op table: 不支持)",
                               "run the cell after the DeQuantStub (float), run it on the CPU with "
                               "prepare_qat_fx(..., hybrid=True), or target bayes"),
        # "torchvision.ops.RoIAlign: qint8 -> qint8" (feature map and boxes qint8)
        *op_rows.roi_align_lowerings(NAME, ACT, ACT, (BoxFormat("bbox 仅支持 List[Tensor] 格式 shape:[1, box_num, 4]"),)),
        # "torchvision.ops.MultiScaleRoIAlign: 参考 torchvision.ops.RoIAlign" (feature maps and boxes qint8)
        *op_rows.multi_scale_roi_align_lowerings(NAME, ACT, ACT, (
            FeatureMaps((qint8,), None, "input：qint8"),
            BoxFormat("bbox 仅支持 List[Tensor] 格式 shape:[1, box_num, 4]"))),
        # "torchvision.models.detection.rpn.AnchorGenerator: qint8,qint16,qint32,float32 -> float32; 仅支持
        # Tensor.shape 可以离线确定的情况": the anchors read the inputs' shapes only
        *op_rows.anchor_generator_lowerings(NAME, (qint8, qint16, qint32)),
        *unsupported_lowerings(NAME, (nn.MultiheadAttention,),
                               "torch.nn.MultiheadAttention is not supported on bernoulli2 (op table: 不支持)",
                               "run attention after the DeQuantStub (float), run it on the CPU with "
                               "prepare_qat_fx(..., hybrid=True), or target bayes"),
        *op_rows.value_preserving_lowerings(NAME, ACT, exclude=NOT_4D),
    ]


def fusion_patterns():
    return op_rows.conv2d_patterns([NAME]) + op_rows.conv_transpose2d_patterns([NAME])
