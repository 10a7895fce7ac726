"""The bayes target as data."""

from qframe_core.dtype import qint8, qint16
from qframe_core.lookup import SegmentTable
from qframe_core.march import MarchSpec
from qframe_core.numerics import RequantRule, Rounding
from qframe_core.resize import BilinearFormat

NAME = "bayes"

SPEC = MarchSpec(
    name=NAME,
    description="RDK Ultra (Bayes BPU): int8/int16 activations, 32-bit multiplier, round half to even",
    activation_dtypes=(qint8, qint16),
    requant=RequantRule(multiplier_bits=32, rounding=Rounding.HALF_EVEN),
    kernels="qframe_march_bayes._kernels",
    # non-linear ops: piecewise-linear segments over a dense region, saturating tails, int16 capable
    lookup=SegmentTable(max_segments=1024, frac_bits=16),
    # bilinear resize: Q16 source coordinates, 12-bit weights, exact Q24 accumulation (int8: fits int32), half to even
    bilinear=BilinearFormat(coord_frac_bits=16, weight_frac_bits=12, grid_mult_frac_bits=32),
)
