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
    """y = x sigmoid(x): sampling's SiLU, which keeps nothing for a backward pass (y is
    written over the sigmoid: one array the size of x)."""
    y = sigmoid(x)
    y *= x
    return y


def silu_and_slope(x):
    """(y, dy/dx): y = x s with s = sigmoid(x), and its slope d/dx x s(x) = s + x s', with
    s' = s (1 - s) and x s = y, so dy/dx = s + y (1 - s), evaluated here while s is at hand."""
    s = sigmoid(x)
    y = x * s
    slope = 1 - s
    slope *= y
    slope += s
    return y, slope


class SiLU(Module):
    """y = x sigmoid(x) (Elfwing et al., 2018; "swish"), any shape. While training, the forward
    pass also evaluates the slope dy/dx, and the backward is dx = dy * slope: one array kept (not
    x, nor y and s), and the passes that would compute the slope from them in the backward are
    made in the forward instead. On cupy each forward is one fused kernel (cupy_backend/kernels.py),
    checked against silu_forward and silu_and_slope."""

    def forward(self, x):
        if not self.training:               # sampling keeps nothing for a backward pass
            return backend.fused("silu_forward", silu_forward)(x)
        y, self.slope = backend.fused("silu_and_slope", silu_and_slope)(x)
        return y

    def backward(self, dy):
        return dy * self.slope
