"""The U-Net's activation: SiLU (swish), and the sigmoid it is built on."""

from .. import backend
from .module import Module


def sigmoid(x):
    """1 / (1 + exp(-x)), any shape, in four passes over one array.

    For x below about -88 in float32 (-709 in float64), exp(-x) overflows to inf and
    1 / (1 + inf) = 0: the correctly rounded sigmoid, so that overflow is the intended rounding,
    not an error, and numpy is told not to warn of it. The result is never inf or nan. (The
    form exp(-|x|) chosen by sign avoids the overflow but takes three times as long.)
    """
    xp = backend.xp
    with backend.np.errstate(over="ignore"):    # numpy's flags (backend.np: host numpy); cupy never warns
        s = xp.negative(x)
        xp.exp(s, out=s)
        s += 1
        return xp.reciprocal(s, out=s)


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
