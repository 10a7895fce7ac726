"""bernoulli2's op table: the "Bernoulli2" columns of the seeds' op tables (appendix)."""

from qframe_core import op_rows
from qframe_core.dtype import qint8, qint32

from .spec import NAME

ACT = (qint8,)


def lowerings():
    return [
        *op_rows.stub_lowerings(NAME, ACT),
        # Conv2d: input qint8, output qint8 or qint32 (high-precision model output)
        *op_rows.conv2d_lowerings(NAME, ACT, (qint8, qint32)),
        *op_rows.linear_unsupported(
            NAME, "torch.nn.Linear is not supported on bernoulli2 (op table: 不支持)",
            "use a 1x1 Conv2d on a [N, C, 1, 1] tensor (bernoulli2 computes 4-D tensors), or keep the Linear after "
            "the DeQuantStub"),
        *op_rows.add_lowerings(NAME, ACT, note="in_channel<=2048; operands must be tensors"),
        *op_rows.value_preserving_lowerings(NAME, ACT),
    ]


def fusion_patterns():
    return op_rows.conv2d_patterns([NAME])
