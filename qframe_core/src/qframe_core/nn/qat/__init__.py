"""QAT modules: float compute with fake quantization, and the march's integer
arithmetic in VALIDATION state."""

from .composite import GLU, LayerNorm, Softmax
from .functional_modules import FloatFunctional
from .lookup import LookupTable
from .pooling import AvgPool2d, ScalePreserving
from .prelu import PReLU
from .stubs import DeQuantStub, QuantStub
from .weighted import BatchNorm, Conv2d, Conv3d, ConvTranspose2d, Linear

__all__ = ["LookupTable", "PReLU", "AvgPool2d", "BatchNorm", "Conv2d", "Conv3d", "ConvTranspose2d", "DeQuantStub", "FloatFunctional", "GLU", "LayerNorm", "Linear", "QuantStub", "ScalePreserving", "Softmax"]
