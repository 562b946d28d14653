"""im2col: a convolution as one matrix product.

Notation:
    N       batch size
    C       input channels
    H, W    input height and width
    KH, KW  kernel height and width
    P       zero padding on each side
    S       stride
    OH, OW  output height and width, OH = (H + 2*P - KH) // S + 1, OW = (W + 2*P - KW) // S + 1

The column matrix has one row per (c, i, j), a channel and a kernel offset, in the order of
`w.reshape(O, C*KH*KW)`, and one column per (n, oh, ow), an output position:

    col[(c, i, j), (n, oh, ow)] = x_padded[n, c, S*oh + i, S*ow + j]

so a convolution is `w.reshape(O, C*KH*KW) @ col`, an (O, N*OH*OW) matrix. Its input
gradient is the transposed convolution, `col2im(w.reshape(O, -1).T @ dy)`: col2im, the adjoint
of im2col, adds each column entry back onto the input entry it was copied from. At stride 1
that is itself a convolution (of dy with the turned kernel, see Im2colConvolution.backward),
so im2col serves both directions there; col2im serves strides above 1.

Putting the batch inside the columns (channel-first, "C N H W") makes every product one
large matrix product and spares the transposed copies a per-image layout would need.
im2col loops over the KH*KW kernel offsets and copies one strided slice each: every element
of `col` is written exactly once; col2im adds the same slices back with `+=`. The same code
runs unchanged on cupy arrays.
"""

import math

from .. import backend


class Buffers:
    """Work arrays kept from one call to the next, one per name.

    The column matrices are large (at 28x28, batch 25: 125 MB a layer); allocating them afresh
    at every step costs the allocator new pages, and faulting those in takes longer than the
    copy that fills them. Each name keeps its largest array and hands out views of its start,
    so changing shapes (the last chunk of a batch, another layer) allocate nothing new.
    Without Buffers (buffers=None) every array is fresh."""

    def __init__(self):
        self.arrays = {}
        self.shapes = {}

    def get(self, name, shape, dtype, zeros=False):
        """An array of that shape; with `zeros`, zero-filled whenever its shape changes (the
        callers that ask for zeros write only its interior)."""
        size = math.prod(shape)
        array = self.arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            array = backend.xp.zeros(size, dtype=dtype)
            self.arrays[name], self.shapes[name] = array, shape
        view = array[:size].reshape(shape)
        if zeros and self.shapes[name] != shape:
            view[...] = 0
        self.shapes[name] = shape
        return view


def _array(buffers, name, shape, dtype, zeros=False):
    if buffers is None:
        return (backend.xp.zeros if zeros else backend.xp.empty)(shape, dtype=dtype)
    return buffers.get(name, shape, dtype, zeros)


SHORT_ROWS = 16     # below this output width, im2col copies in two passes (measured 1.8x faster at 8x8)


def output_size(H, W, KH, KW, P, S=1):
    """OH = (H + 2*P - KH) // S + 1, OW = (W + 2*P - KW) // S + 1."""
    return (H + 2 * P - KH) // S + 1, (W + 2 * P - KW) // S + 1


def pad_channel_first(x, P, buffers=None):
    """x: (N, C, H, W) -> (C, N, H + 2P, W + 2P), zero-padded, channel first. (A kept buffer
    is zeroed once: its border is never written.)"""
    N, C, H, W = x.shape
    # one buffer per padding: same-shaped arrays with another P would leave data in the border
    x_padded = _array(buffers, f"x_padded_{P}", (C, N, H + 2 * P, W + 2 * P), x.dtype, zeros=True)
    x_padded[:, :, P:P + H, P:P + W] = x.transpose(1, 0, 2, 3)
    return x_padded


def im2col(x, KH, KW, P, buffers=None, S=1):
    """x: (N, C, H, W) -> col: (C*KH*KW, N*OH*OW)."""
    N, C, H, W = x.shape
    OH, OW = output_size(H, W, KH, KW, P, S)
    x_padded = pad_channel_first(x, P, buffers)                         # (C, N, H+2P, W+2P)
    col = _array(buffers, "col", (C, KH, KW, N, OH, OW), x.dtype)
    if S > 1:
        for i in range(KH):
            for j in range(KW):
                col[:, i, j] = x_padded[:, :, i:i + S * (OH - 1) + 1:S, j:j + S * (OW - 1) + 1:S]   # (C, N, OH, OW)
    elif OW >= SHORT_ROWS:
        for i in range(KH):
            for j in range(KW):
                col[:, i, j] = x_padded[:, :, i:i + OH, j:j + OW]       # (C, N, OH, OW)
    else:
        # Rows of a few numbers make short copies. Shift the columns once per j first:
        # then each (i, j) block is OH whole rows, one run of OH*OW numbers per image.
        x_shifted = _array(buffers, "x_shifted", (C, KW, N, H + 2 * P, OW), x.dtype)
        for j in range(KW):
            x_shifted[:, j] = x_padded[:, :, :, j:j + OW]               # (C, N, H+2P, OW)
        for i in range(KH):
            col[:, i] = x_shifted[:, :, :, i:i + OH]                    # (C, KW, N, OH, OW)
    return col.reshape(C * KH * KW, N * OH * OW)


def col2im(col, x_shape, KH, KW, P, buffers=None, S=1):
    """The adjoint of im2col: col: (C*KH*KW, N*OH*OW) -> dx: (N, C, H, W), x_shape = (N, C, H, W).

    Each entry of col goes back, added, to the entry of x_padded that im2col copied it from:
        dx_padded[n, c, S*oh + i, S*ow + j] += col[(c, i, j), (n, oh, ow)]
    then the padding is cropped. Windows overlap where S < KH, so entries add up."""
    N, C, H, W = x_shape
    OH, OW = output_size(H, W, KH, KW, P, S)
    col = col.reshape(C, KH, KW, N, OH, OW)
    dx_padded = _array(buffers, "dx_padded", (C, N, H + 2 * P, W + 2 * P), col.dtype)
    dx_padded[...] = 0
    for i in range(KH):
        for j in range(KW):
            dx_padded[:, :, i:i + S * (OH - 1) + 1:S, j:j + S * (OW - 1) + 1:S] += col[:, i, j]   # (C, N, OH, OW)
    return dx_padded[:, :, P:P + H, P:P + W].transpose(1, 0, 2, 3)       # (N, C, H, W)


class Im2colConvolution:
    """Conv2d's forward and backward as im2col + one matrix product (the reference).

    While training, a column matrix of at most `layer.max_kept_bytes` is kept for the backward
    pass (`self.col`); a larger one is rebuilt there, one more im2col for much less memory (the
    lecture's net at 28x28, batch 25: kept, 1.0 GB and 0.31 s a step; rebuilt, with
    max_kept_bytes = 0: 0.23 GB and 0.38 to 0.46 s). Above `layer.max_col_bytes` the batch is
    processed in chunks (`layer._chunks`), so working memory stays bounded whatever the batch.
    The column matrices live in buffers kept from step to step (Buffers): the layer's own
    (`layer.buffers`) for the columns it keeps, and `layer.work_buffers`, shared by the
    convolutions of a model, for those needed only for a moment (the columns of dy, columns
    not kept, all of them when sampling)."""

    col = None      # the columns kept from forward for backward, or None

    def forward(self, layer, x):
        N, _, H, W = x.shape
        O = layer.w.shape[0]
        OH, OW = output_size(H, W, layer.KH, layer.KW, layer.P, layer.S)
        w = layer.w.reshape(O, -1)                                         # (O, C*KH*KW)
        y = backend.xp.empty((O, N, OH, OW), dtype=x.dtype)
        chunks = layer._chunks(x.shape)
        keep = layer.training and len(chunks) == 1 and layer._col_bytes(x.shape) <= layer.max_kept_bytes
        buffers = layer.buffers if keep else layer.work_buffers
        for n0, n1 in chunks:
            col = im2col(x[n0:n1], layer.KH, layer.KW, layer.P, buffers, layer.S)   # (C*KH*KW, n*OH*OW)
            backend.xp.matmul(w, col, out=y[:, n0:n1].reshape(O, -1))      # y = w col
        y += layer.b.reshape(O, 1, 1, 1)
        layer.x = x if layer.training else None          # sampling keeps nothing for a backward pass
        self.col = col if keep else None
        return y.transpose(1, 0, 2, 3)                                    # (N, O, OH, OW)

    def backward(self, layer, dy):
        O, C, KH, KW = layer.w.shape
        P, S = layer.P, layer.S
        # At stride 1, dL/dx is the convolution of dy with the kernel turned by 180 degrees and its
        # in and out channels swapped, padded by KH - 1 - P:
        #   dx[n, c, h, v] = sum_{o, i, j} dy_padded[n, o, h + i, v + j] w[o, c, KH-1-i, KW-1-j]
        w_turned = layer.w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(C, -1)   # (C, O*KH*KW)
        layer.db += dy.sum(axis=(0, 2, 3))                                # dL/db = sum over n, oh, ow
        dy_t = dy.transpose(1, 0, 2, 3)                                   # (O, N, OH, OW)
        N, _, H, W = layer.x.shape
        dx = backend.xp.empty((C, N, H, W), dtype=dy.dtype)
        for n0, n1 in layer._chunks(layer.x.shape):
            col = self.col if self.col is not None else im2col(layer.x[n0:n1], KH, KW, P, layer.work_buffers, S)
            dy_chunk = dy_t[:, n0:n1].reshape(O, -1)                      # (O, n*OH*OW)
            # dL/dw = dy col^T, computed as (col dy^T)^T: the operand order BLAS runs fastest
            layer.dw += (col @ dy_chunk.T).T.reshape(layer.dw.shape)
            if S == 1:
                dy_col = im2col(dy[n0:n1], KH, KW, KH - 1 - P, layer.work_buffers)    # (O*KH*KW, n*H*W)
                backend.xp.matmul(w_turned, dy_col, out=dx[:, n0:n1].reshape(C, -1))     # dL/dx = w_turned dy_col
            else:
                # dL/dx: the transposed convolution, dcol = w^T dy, added back onto x by col2im.
                # dcol takes the place of col in the work buffers: col is not read again.
                dcol = _array(layer.work_buffers, "col", col.shape, dy.dtype)     # (C*KH*KW, n*OH*OW)
                backend.xp.matmul(layer.w.reshape(O, -1).T, dy_chunk, out=dcol)
                dx_chunk = col2im(dcol, layer.x[n0:n1].shape, KH, KW, P, layer.work_buffers, S)  # (n, C, H, W)
                dx[:, n0:n1] = dx_chunk.transpose(1, 0, 2, 3)
        self.col = None
        return dx.transpose(1, 0, 2, 3)                                   # (N, C, H, W)
