"""The engine: a module tree with hand-written forward and backward passes, the layers, the
convolution (im2col, and Winograd beside it), the losses, Adam and the EMA, the gradient
checks, and the checkpoint file. It knows arrays, not diffusion."""

from .conv import Conv2d
from .layers import Dropout, Linear, ReLU, uniform
from .losses import MSELoss, SoftmaxCrossEntropy
from .module import Module, Sequential, evaluating
