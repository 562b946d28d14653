"""Layers with hand-written forward and backward passes.

Each layer caches in `forward` what its `backward` needs. `backward(dy)` takes the gradient
of the loss with respect to the layer's output and returns the gradient with respect to its
input; gradients of parameters *accumulate* (`dw += ...`), as in micrograd and PyTorch, so
call `zero_grad()` before each backward pass.

Parameters follow PyTorch's shapes and initialisation (uniform in +-1/sqrt(fan_in) for weight
and bias), so a model trains like the lecture's PyTorch code.
"""

import math

from . import backend, winograd
from .im2col import Buffers, Im2colConvolution, output_size


def uniform(rng, bound, shape):
    """U(-bound, bound) drawn on the host with `rng`, as a backend array of the working dtype."""
    return backend.asarray(rng.uniform(-bound, bound, shape), dtype=backend.dtype)


class Layer:
    """Base class: no parameters, training mode on."""

    param_names = {}        # attribute -> public name, e.g. {"w": "weight"}; gradient is "d" + attribute
    training = True         # layers may keep more for backward while training

    def parameters(self):
        """Yield (name, param, grad) for each parameter: the live arrays, not copies."""
        for attr, public_name in self.param_names.items():
            yield public_name, getattr(self, attr), getattr(self, "d" + attr)

    def zero_grad(self):
        for _, _, grad in self.parameters():
            grad[...] = 0


class Linear(Layer):
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
        self.x = x
        return x @ self.w.T + self.b

    def backward(self, dy):
        self.dw += backend.xp.matmul(dy.T, self.x, out=self.scratch)    # dL/dw = dy^T x  (D_out, D_in)
        self.db += dy.sum(axis=0)                                       # dL/db = sum_n dy (D_out,)
        return dy @ self.w                                              # dL/dx = dy w     (N, D_in)


class ReLU(Layer):
    """y = max(x, 0), any shape."""

    def forward(self, x):
        self.y = backend.xp.maximum(x, 0)
        return self.y

    def backward(self, dy):
        return dy * (self.y > 0)            # dy/dx = 1 where x > 0, else 0


class Dropout(Layer):
    """Inverted dropout (Srivastava et al., 2014), any shape: while training,

        y = x * mask,   mask = keep / (1 - p),   keep ~ Bernoulli(1 - p) for each element,

    so E[y] = x and evaluation (`train(False)`) is the identity. A fresh mask is drawn at every
    forward pass from `rng`, a generator of the backend (backend.default_rng).
    """

    def __init__(self, p, rng):
        if not 0 <= p < 1:
            raise ValueError(f"the dropout probability must be in [0, 1), not {p}")
        self.p, self.rng = p, rng

    def forward(self, x):
        if not self.training:
            return x
        keep = self.rng.random(x.shape, dtype=x.dtype) >= self.p
        self.mask = keep.astype(x.dtype) / (1 - self.p)
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask               # dy/dx = mask: the dropped elements pass no gradient


class TimeAppender(Layer):
    """Appends the time t to the input, as in the lecture.

    x: (N, D)        -> (N, D + 1), t as one more column;
    x: (N, C, H, W)  -> (N, C + 1, H, W), t as one more constant channel.
    t: a Python float (the same time for the whole batch) or an array of shape (N,).
    """

    def forward(self, x, t):
        xp = backend.xp
        N = x.shape[0]
        if isinstance(t, (int, float)):
            t = xp.full((N,), t, dtype=x.dtype)
        t = t.astype(x.dtype, copy=False).reshape((N, 1) + (1,) * (x.ndim - 2))
        t = xp.broadcast_to(t, (N, 1) + x.shape[2:])                  # (N, 1, ...)
        return xp.concatenate((x, t), axis=1)

    def backward(self, dy):
        return dy[:, :-1]                   # the time column carries no gradient to x


class LabelAppender(Layer):
    """Appends the label y as a one-hot code of K + 1 classes (class K: "no label"), the way
    TimeAppender appends t: the next layer's weights on these columns act as a learned class
    embedding (classifier-free guidance, Ho & Salimans 2022).

    x: (N, D)        -> (N, D + K + 1), the code as K + 1 more columns;
    x: (N, C, H, W)  -> (N, C + K + 1, H, W), as K + 1 more constant channels.
    labels: (N,) integers in 0..K.
    """

    def __init__(self, nb_classes):
        self.nb_classes = nb_classes        # K

    def forward(self, x, labels):
        xp = backend.xp
        N, K = x.shape[0], self.nb_classes
        one_hot = (xp.asarray(labels).reshape(N, 1) == xp.arange(K + 1)).astype(x.dtype)      # (N, K + 1)
        one_hot = one_hot.reshape((N, K + 1) + (1,) * (x.ndim - 2))
        one_hot = xp.broadcast_to(one_hot, (N, K + 1) + x.shape[2:])             # (N, K + 1, ...)
        return xp.concatenate((x, one_hot), axis=1)

    def backward(self, dy):
        return dy[:, :-(self.nb_classes + 1)]   # the label is an integer: no gradient goes to it


class Conv2d(Layer):
    """2-D convolution (a cross-correlation, as in PyTorch), stride 1, zero padding P.

    x: (N, C, H, W)   w: (O, C, KH, KW)   b: (O,)   y: (N, O, OH, OW)
    OH = H + 2*P - KH + 1,  OW = W + 2*P - KW + 1

    `algorithm` says how it is computed: "im2col", im2col + one matrix product (im2col.py, the
    reference); "winograd", Winograd's F(4x4, r x r) on stacked tiles (winograd.py; kernel
    sizes 3 and 5), fewer multiplications; "auto", Winograd on the numpy backend in float32 for
    the kernel sizes it supports, im2col elsewhere (so the float64 gradient checks and the GPU
    run the reference). With im2col: while training,
    a column matrix of at most `max_kept_bytes` is kept for the backward pass; a larger one is
    rebuilt there, one more im2col for much less memory (the lecture's net at 28x28, batch 25:
    kept, 1.0 GB and 0.31 s a step here; rebuilt, with max_kept_bytes = 0: 0.23 GB and 0.38 to
    0.46 s). Above `max_col_bytes` the batch is processed in chunks, so working memory stays
    bounded whatever the batch. The column matrices live in buffers kept from step to step
    (im2col.Buffers): the layer's own for the columns it keeps, and `work_buffers`, shared by
    all the convolutions of a Sequential, for those needed only for a moment (the columns of
    dy, columns not kept, all of them when sampling).
    """

    param_names = {"w": "weight", "b": "bias"}
    max_col_bytes = 256 * 2**20     # process the batch in chunks above this
    max_kept_bytes = 256 * 2**20    # keep the columns for backward up to this

    def __init__(self, c_in, c_out, kernel_size, padding=0, rng=None, algorithm="auto"):
        if not 0 <= padding < kernel_size:
            raise ValueError(f"padding must be in [0, kernel_size), not {padding}")
        if algorithm not in ("auto", "im2col", "winograd"):
            raise ValueError(f"algorithm must be 'auto', 'im2col' or 'winograd', not {algorithm!r}")
        if algorithm == "winograd" and not winograd.supports(kernel_size):
            raise ValueError(f"Winograd's transforms are defined here for kernel sizes "
                             f"{sorted(winograd.POINTS)}, not {kernel_size}")
        self.algorithm = algorithm
        self._im2col, self._winograd = Im2colConvolution(), winograd.WinogradConvolution()
        rng = rng if rng is not None else backend.host_rng()
        self.KH = self.KW = kernel_size
        self.P = padding
        bound = 1 / math.sqrt(c_in * kernel_size * kernel_size)
        self.w = uniform(rng, bound, (c_out, c_in, kernel_size, kernel_size))
        self.b = uniform(rng, bound, (c_out,))
        self.dw = backend.xp.zeros_like(self.w)
        self.db = backend.xp.zeros_like(self.b)
        self.buffers = Buffers()            # this layer's columns, kept for backward
        self.work_buffers = Buffers()       # columns needed one layer at a time

    def _col_bytes(self, x_shape):
        """The size of the column matrix of a batch of this shape."""
        N, C, H, W = x_shape
        OH, OW = output_size(H, W, self.KH, self.KW, self.P)
        return N * C * self.KH * self.KW * OH * OW * self.w.itemsize

    def _chunks(self, x_shape):
        """(n0, n1) ranges of the batch whose column matrices fit in max_col_bytes."""
        N = x_shape[0]
        n = max(1, min(N, self.max_col_bytes // (self._col_bytes(x_shape) // N)))
        return [(n0, min(n0 + n, N)) for n0 in range(0, N, n)]

    def algorithm_for(self, x):
        """The algorithm object that computes this layer on input x (see `algorithm`)."""
        if self.algorithm == "winograd" or (self.algorithm == "auto" and backend.name == "numpy"
                                            and x.dtype == backend.xp.float32 and winograd.supports(self.KH)):
            return self._winograd
        return self._im2col

    def forward(self, x):
        self._running = self.algorithm_for(x)
        return self._running.forward(self, x)

    def backward(self, dy):
        return self._running.backward(self, dy)


class Sequential(Layer):
    """Layers applied in order. Extra arguments of `forward` go to the first layers, one each:
    the time t to the first, as in the lecture, where the model's input is the pair (x_t, t),
    and for a conditional model the label y to the second (TimeAppender, LabelAppender).

    All parameters live in one flat buffer and all gradients in another (each layer's arrays
    are views into them), so the optimiser, the EMA and `zero_grad` are a few whole-model
    passes instead of one small pass per array.
    """

    def __init__(self, *layers):
        self.layers = list(layers)
        self.flat_params, self.flat_grads = self._flatten()
        shared = Buffers()
        for layer in self.layers:
            if isinstance(layer, Conv2d):
                layer.work_buffers = shared

    def _flatten(self):
        xp = backend.xp
        owned = [(layer, attr) for layer in self.layers for attr in layer.param_names]
        size = sum(getattr(layer, attr).size for layer, attr in owned)
        dtype = getattr(*owned[0]).dtype if owned else backend.dtype
        flat_params = xp.empty(size, dtype=dtype)
        flat_grads = xp.zeros(size, dtype=dtype)
        offset = 0
        for layer, attr in owned:
            param = getattr(layer, attr)
            view = flat_params[offset:offset + param.size].reshape(param.shape)
            view[...] = param
            setattr(layer, attr, view)
            setattr(layer, "d" + attr, flat_grads[offset:offset + param.size].reshape(param.shape))
            offset += param.size
        return flat_params, flat_grads

    def forward(self, x, *args):
        for layer, arg in zip(self.layers, args):
            x = layer.forward(x, arg)
        for layer in self.layers[len(args):]:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def parameters(self):
        """Yield ("<layer index>.<name>", param, grad), named as in a PyTorch state_dict."""
        for index, layer in enumerate(self.layers):
            for name, param, grad in layer.parameters():
                yield f"{index}.{name}", param, grad

    def flat_parameters(self):
        """[(all parameters, all gradients)]: the two flat buffers, for Adam and the EMA."""
        return [(self.flat_params, self.flat_grads)]

    def zero_grad(self):
        self.flat_grads[...] = 0

    def train(self, mode=True):
        """Training mode keeps what backward needs; `train(False)` (sampling) keeps less."""
        self.training = mode
        for layer in self.layers:
            layer.training = mode
        return self


class MSELoss:
    """loss = mean((y - target)^2) over every element; backward gives dloss/dy."""

    def forward(self, y, target):
        self.diff = y - target
        return (self.diff * self.diff).mean()

    @staticmethod
    def difference(y_plus, y_minus, target):
        """loss(y_plus) - loss(y_minus), factored as mean((y+ - y-)(y+ + y- - 2 target)) so that
        the finite differences of the gradient checks lose no digits to cancellation."""
        return ((y_plus - y_minus) * (y_plus + y_minus - 2 * target)).mean()

    def backward(self):
        return self.diff * (2 / self.diff.size)     # d/dy mean((y - target)^2) = 2 (y - target) / size


class SoftmaxCrossEntropy:
    """loss = -(1/N) sum_n log softmax(z_n)[label_n], the classifier's loss; backward gives dloss/dz.

    z: (N, K) logits   labels: (N,) integers in [0, K)   loss: a scalar
    log softmax(z)_k = (z_k - m) - log sum_j exp(z_j - m) with m = max_j z_j: every exponent is
    at most 0, so exp never overflows, and the largest term of the sum is 1, so log never sees 0.
    """

    @staticmethod
    def log_softmax(z):
        """log softmax over the last axis, shifted by the row maximum (see above). (N, K) -> (N, K)"""
        xp = backend.xp
        shifted = z - z.max(axis=-1, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))

    def forward(self, z, labels):
        log_p = self.log_softmax(z)                                       # (N, K)
        self.p = backend.xp.exp(log_p)                                    # softmax(z), for backward
        self.labels = labels
        return -log_p[backend.xp.arange(len(labels)), labels].mean()

    def difference(self, z_plus, z_minus, labels):
        """loss(z_plus) - loss(z_minus), for the gradient checks (leaves the cached p alone)."""
        rows = backend.xp.arange(len(labels))
        return (self.log_softmax(z_minus)[rows, labels] - self.log_softmax(z_plus)[rows, labels]).mean()

    def backward(self):
        dz = self.p.copy()                                                # dloss/dz = (softmax(z) - onehot(label)) / N
        dz[backend.xp.arange(len(self.labels)), self.labels] -= 1
        return dz / len(self.labels)
