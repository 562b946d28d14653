"""The engine: a module tree with hand-written forward and backward passes, the layers, the
convolution (im2col, and Winograd beside it), normalisation, attention and resampling, the
losses, Adam and the EMA, the gradient checks, and the checkpoint file. It knows arrays, not
diffusion."""

from .activations import SiLU, sigmoid
from .attention import SelfAttention
from .conv import Conv2d
from .layers import Dropout, Flatten, Linear, ReLU, uniform
from .losses import MSELoss, SoftmaxCrossEntropy
from .module import Module, Sequential, evaluating
from .norm import GroupNorm
from .resample import Concat, Upsample
