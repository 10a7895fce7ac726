"""Integer modules produced by convert, and ``FloatFunctional`` for float models."""

from .anchor_generator import AnchorGenerator
from .attention import MultiheadAttention
from .compare import Compare
from .composite import GLU, LayerNorm, Softmax
from .functional_modules import FloatFunctional
from .grid_sample import GridSample
from .lookup import LookupTable
from .pooling import AvgPool2d, ScalePreserving
from .prelu import PReLU
from .qfunctional import QFunctional
from .recurrent import LSTMCell
from .roi_align import MultiScaleRoIAlign, RoIAlign
from .stubs import DeQuantize, Quantize
from .weighted import Conv2d, Linear
from .weighted_exact import Conv3d, ConvTranspose2d

__all__ = ["AnchorGenerator", "MultiScaleRoIAlign", "Compare", "LookupTable", "PReLU", "AvgPool2d", "ScalePreserving", "Conv2d", "Conv3d", "ConvTranspose2d", "DeQuantize", "FloatFunctional", "GLU", "GridSample", "LayerNorm", "Linear", "LSTMCell", "MultiheadAttention", "QFunctional", "Quantize", "RoIAlign", "Softmax"]
