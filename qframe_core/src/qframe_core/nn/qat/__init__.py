"""QAT modules: float compute with fake quantization, and the march's integer
arithmetic in VALIDATION state."""

# the quantization package imports this one (prepare needs QATModule): load it first, whatever the order below
from ... import quantization as _quantization  # noqa: F401

# isort: split
from .anchor_generator import AnchorGenerator
from .attention import MultiheadAttention
from .compare import Compare
from .composite import GLU, LayerNorm, Softmax
from .functional_modules import FloatFunctional
from .grid_sample import GridSample
from .lookup import LookupTable
from .pooling import AvgPool2d, ScalePreserving
from .prelu import PReLU
from .recurrent import LSTMCell
from .roi_align import MultiScaleRoIAlign, RoIAlign
from .stubs import DeQuantStub, QuantStub
from .weighted import BatchNorm, Conv2d, Conv3d, ConvTranspose2d, Linear

__all__ = ["AnchorGenerator", "MultiScaleRoIAlign", "Compare", "LookupTable", "PReLU", "AvgPool2d", "BatchNorm", "Conv2d", "Conv3d", "ConvTranspose2d", "DeQuantStub", "FloatFunctional", "GLU", "GridSample", "LayerNorm", "Linear", "LSTMCell", "MultiheadAttention", "QuantStub", "RoIAlign", "ScalePreserving", "Softmax"]
