"""The U-Net's activation: SiLU (swish), and the sigmoid it is built on."""

from .. import backend
from .module import Module


def sigmoid(x):
    """1 / (1 + exp(-x)), any shape, computed from e = exp(-|x|) only, which lies in (0, 1]:

        sigmoid(x) = 1 / (1 + e)  for x >= 0,    e / (1 + e)  for x < 0   (multiply by e^x / e^x)

    so exp never overflows, even at x = -1000 in float32.
    """
    xp = backend.xp
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class SiLU(Module):
    """y = x sigmoid(x) (Elfwing et al., 2018; "swish"), any shape."""

    def forward(self, x):
        s = sigmoid(x)
        if self.training:                   # sampling keeps nothing for a backward pass
            self.x, self.s = x, s
        return x * s

    def backward(self, dy):
        s = self.s
        return dy * (s + self.x * s * (1 - s))      # d/dx x s(x) = s + x s', with s' = s (1 - s)
