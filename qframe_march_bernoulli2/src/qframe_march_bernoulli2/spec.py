"""The bernoulli2 target as data."""

from qframe_core.dtype import qint8
from qframe_core.lookup import DirectTable
from qframe_core.march import MarchSpec
from qframe_core.numerics import RequantRule, Rounding
from qframe_core.resize import BilinearFormat

NAME = "bernoulli2"

SPEC = MarchSpec(
    name=NAME,
    description="RDK X3 (Bernoulli2 BPU): int8 activations, 4-D tensors, 16-bit multiplier, round half up",
    activation_dtypes=(qint8,),
    requant=RequantRule(multiplier_bits=16, rounding=Rounding.HALF_UP),
    kernels="qframe_march_bernoulli2._kernels",
    max_rank=4,
    # non-linear ops: a 256-entry table indexed by the int8 input
    lookup=DirectTable(entries=256),
    # bilinear resize: Q16 source coordinates, 8-bit weights, exact Q16 accumulation (fits int32), half up
    bilinear=BilinearFormat(coord_frac_bits=16, weight_frac_bits=8),
)
