"""Conv2d: a 2-D convolution with its algorithms, im2col (the reference), Winograd, and one
matrix product for 1x1 kernels."""

import math
import numbers

from .. import backend
from . import winograd
from .im2col import Buffers, Im2colConvolution, output_size
from .layers import uniform
from .module import Module
from .pointwise import PointwiseConvolution


class Conv2d(Module):
    """2-D convolution (a cross-correlation, as in PyTorch), zero padding P, stride S.

    x: (N, C, H, W)   w: (O, C, KH, KW)   b: (O,)   y: (N, O, OH, OW)
    OH = (H + 2*P - KH) // S + 1,  OW = (W + 2*P - KW) // S + 1

    Stride 2 with a 3x3 kernel and padding 1 halves the image (28 -> 14 -> 7): the U-Net's
    down-sampling in Ho et al. (2020).

    `algorithm` says how it is computed: "im2col", im2col + one matrix product (im2col.py, the
    reference); "winograd", Winograd's F(4x4, r x r) on stacked tiles (winograd.py; kernel
    sizes 3 and 5, stride 1), fewer multiplications; "auto", one matrix product over the
    channels for a 1x1 kernel at stride 1 (pointwise.py: no column copies), Winograd on the
    numpy backend in float32 where it applies, im2col elsewhere (so the float64 gradient checks
    of the 3x3 layers, the GPU's and the strided convolutions run the reference). Each
    algorithm keeps what its backward needs; how much memory that takes, and the batch chunking
    that bounds it, is told in im2col.py's Im2colConvolution.
    `work_buffers` holds the arrays needed only for a moment; the root of a model gives all its
    convolutions one shared set (Module.flatten).
    """

    param_names = {"w": "weight", "b": "bias"}
    max_col_bytes = 256 * 2**20     # process the batch in chunks above this
    max_kept_bytes = 256 * 2**20    # keep the columns for backward up to this

    def __init__(self, c_in, c_out, kernel_size, padding=0, rng=None, algorithm="auto", stride=1):
        if not isinstance(stride, numbers.Integral) or stride < 1:
            raise ValueError(f"stride must be a positive integer, not {stride!r}")
        if not 0 <= padding < kernel_size:
            raise ValueError(f"padding must be in [0, kernel_size), not {padding}")
        if algorithm not in ("auto", "im2col", "winograd"):
            raise ValueError(f"algorithm must be 'auto', 'im2col' or 'winograd', not {algorithm!r}")
        if algorithm == "winograd" and not winograd.supports(kernel_size):
            raise ValueError(f"Winograd's transforms are defined here for kernel sizes "
                             f"{sorted(winograd.POINTS)}, not {kernel_size}")
        if algorithm == "winograd" and stride != 1:
            raise ValueError(f"Winograd's convolution is defined here for stride 1 only, not stride {stride}")
        self.algorithm = algorithm
        self._im2col, self._winograd = Im2colConvolution(), winograd.WinogradConvolution()
        self._pointwise = PointwiseConvolution()
        rng = rng if rng is not None else backend.host_rng()
        self.KH = self.KW = kernel_size
        self.P = padding
        self.S = int(stride)
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
        OH, OW = output_size(H, W, self.KH, self.KW, self.P, self.S)
        return N * C * self.KH * self.KW * OH * OW * self.w.itemsize

    def _chunks(self, x_shape):
        """(n0, n1) ranges of the batch whose column matrices fit in max_col_bytes."""
        N = x_shape[0]
        n = max(1, min(N, self.max_col_bytes // (self._col_bytes(x_shape) // N)))
        return [(n0, min(n0 + n, N)) for n0 in range(0, N, n)]

    def algorithm_for(self, x):
        """The algorithm object that computes this layer on input x (see `algorithm`)."""
        if self.algorithm == "auto" and self.KH == 1 and self.S == 1:
            return self._pointwise
        if self.algorithm == "winograd" or (self.algorithm == "auto" and self.S == 1 and backend.name == "numpy"
                                            and x.dtype == backend.xp.float32 and winograd.supports(self.KH)):
            return self._winograd
        return self._im2col

    def forward(self, x):
        self.used = self.algorithm_for(x)           # the algorithm whose backward must follow
        return self.used.forward(self, x)

    def backward(self, dy):
        return self.used.backward(self, dy)
