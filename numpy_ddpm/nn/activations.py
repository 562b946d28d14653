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


def silu_forward(x):
    """(y, s): y = x sigmoid(x), and s = sigmoid(x), which the backward reuses."""
    s = sigmoid(x)
    return x * s, s


def silu_backward(dy, y, s):
    """dL/dx from dL/dy, y = x s and s = sigmoid(x): d/dx x s(x) = s + x s', with s' = s (1 - s),
    and x s = y, so dy/dx = s + y (1 - s)."""
    return dy * (s + y * (1 - s))


class SiLU(Module):
    """y = x sigmoid(x) (Elfwing et al., 2018; "swish"), any shape. The backward needs s and
    y, not x: y is the next layer's input, which a convolution keeps anyway, so x is freed (as
    many bytes a block as the activation). On cupy each pass is one fused kernel
    (cupy_backend/kernels.py), checked against silu_forward and silu_backward."""

    def forward(self, x):
        y, s = backend.fused("silu_forward", silu_forward)(x)
        if self.training:                   # sampling keeps nothing for a backward pass
            self.y, self.s = y, s
        return y

    def backward(self, dy):
        return backend.fused("silu_backward", silu_backward)(dy, self.y, self.s)
