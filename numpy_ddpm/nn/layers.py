"""The dense layers: Linear, ReLU and Dropout, each backward under its forward.

Parameters follow PyTorch's shapes and initialisation (uniform in +-1/sqrt(fan_in) for weight
and bias), so a model trains like the lecture's PyTorch code.
"""

import math

from .. import backend
from .module import Module


def uniform(rng, bound, shape):
    """U(-bound, bound) drawn on the host with `rng`, as a backend array of the working dtype."""
    return backend.asarray(rng.uniform(-bound, bound, shape), dtype=backend.dtype)


class Linear(Module):
    """y = x w^T + b

    x: (N, D_in)   w: (D_out, D_in)   b: (D_out,)   y: (N, D_out)
    """

    param_names = {"w": "weight", "b": "bias"}

    def __init__(self, d_in, d_out, rng=None):
        rng = rng if rng is not None else backend.host_rng()
        bound = 1 / math.sqrt(d_in)
        self.w = uniform(rng, bound, (d_out, d_in))
        self.b = uniform(rng, bound, (d_out,))
        self.dw = backend.xp.zeros_like(self.w)
        self.db = backend.xp.zeros_like(self.b)
        self.scratch = backend.xp.empty_like(self.w)   # for dy^T x: no fresh (D_out, D_in) array per step

    def forward(self, x):
        self.x = x if self.training else None       # sampling keeps nothing for a backward pass
        return x @ self.w.T + self.b

    def backward(self, dy):
        self.dw += backend.xp.matmul(dy.T, self.x, out=self.scratch)    # dL/dw = dy^T x  (D_out, D_in)
        self.db += dy.sum(axis=0)                                       # dL/db = sum_n dy (D_out,)
        return dy @ self.w                                              # dL/dx = dy w     (N, D_in)


class ReLU(Module):
    """y = max(x, 0), any shape."""

    def forward(self, x):
        y = backend.xp.maximum(x, 0)
        self.y = y if self.training else None
        return y

    def backward(self, dy):
        return dy * (self.y > 0)            # dy/dx = 1 where x > 0, else 0


class Dropout(Module):
    """Inverted dropout (Srivastava et al., 2014), any shape: while training,

        y = x * keep / (1 - p),   keep ~ Bernoulli(1 - p) for each element,

    so E[y] = x and evaluation (`train(False)`) is the identity. The mask is kept for backward
    as booleans (a byte an element, not a float's four). A fresh mask is drawn at every
    forward pass from a generator of the backend (backend.default_rng): the `rng` given to
    forward (a training step's own generator, so that a resumed run draws the same masks), else
    the one given at construction.
    """

    def __init__(self, p, rng=None):
        if not 0 <= p < 1:
            raise ValueError(f"the dropout probability must be in [0, 1), not {p}")
        self.p, self.rng = p, rng

    def forward(self, x, rng=None):
        if not self.training or self.p == 0:
            self.mask = None
            return x
        rng = rng if rng is not None else self.rng
        if rng is None:
            raise ValueError("dropout while training needs a generator: pass rng to forward or to Dropout")
        self.mask = rng.random(x.shape, dtype=x.dtype) >= self.p          # keep, booleans
        y = x * self.mask
        y *= 1 / (1 - self.p)
        return y

    def backward(self, dy):
        if self.mask is None:
            return dy
        dx = dy * self.mask                 # dy/dx = keep / (1 - p): the dropped elements pass no gradient
        dx *= 1 / (1 - self.p)
        return dx


class Flatten(Module):
    """y = x reshaped to (N, everything else): from a convolution's maps to a Linear layer.

    x: (N, C, H, W)   y: (N, C*H*W)   backward: dy reshaped back to x's shape
    """

    def forward(self, x):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.shape)
