"""im2col and col2im: a convolution as one matrix product.

Notation:
    N       batch size
    C       input channels
    H, W    input height and width
    KH, KW  kernel height and width
    P       zero padding on each side
    OH, OW  output height and width, OH = H + 2*P - KH + 1, OW = W + 2*P - KW + 1 (stride 1)

The column matrix has one row per (c, i, j), a channel and a kernel offset, in the order of
`w.reshape(O, C*KH*KW)`, and one column per (n, oh, ow), an output position:

    col[(c, i, j), (n, oh, ow)] = x_padded[n, c, oh + i, ow + j]

so a convolution is `w.reshape(O, C*KH*KW) @ col`, an (O, N*OH*OW) matrix.

Putting the batch inside the columns (channel-first, "C N H W") makes every product one
large matrix product and spares the transposed copies a per-image layout would need. Both
functions loop over the KH*KW kernel offsets and copy one strided slice each: every element
of `col` is written exactly once, and the same code runs unchanged on cupy arrays.
"""

from . import backend


def output_size(H, W, KH, KW, P):
    """OH = H + 2*P - KH + 1, OW = W + 2*P - KW + 1."""
    return H + 2 * P - KH + 1, W + 2 * P - KW + 1


def pad_channel_first(x, P):
    """x: (N, C, H, W) -> (C, N, H + 2P, W + 2P), zero-padded, channel first."""
    N, C, H, W = x.shape
    x_padded = backend.xp.zeros((C, N, H + 2 * P, W + 2 * P), dtype=x.dtype)
    x_padded[:, :, P:P + H, P:P + W] = x.transpose(1, 0, 2, 3)
    return x_padded


def im2col(x, KH, KW, P):
    """x: (N, C, H, W) -> col: (C*KH*KW, N*OH*OW)."""
    N, C, H, W = x.shape
    OH, OW = output_size(H, W, KH, KW, P)
    x_padded = pad_channel_first(x, P)                                  # (C, N, H+2P, W+2P)
    col = backend.xp.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            col[:, i, j] = x_padded[:, :, i:i + OH, j:j + OW]           # (C, N, OH, OW)
    return col.reshape(C * KH * KW, N * OH * OW)


def col2im(dcol, x_shape, KH, KW, P):
    """The adjoint of im2col: dcol: (C*KH*KW, N*OH*OW) -> dx: (N, C, H, W).

    Each input pixel receives the sum of the gradients of every column entry it was copied
    into, so the loop is im2col's with `+=` in place of `=`.
    """
    N, C, H, W = x_shape
    OH, OW = output_size(H, W, KH, KW, P)
    dcol = dcol.reshape(C, KH, KW, N, OH, OW)
    dx_padded = backend.xp.zeros((C, N, H + 2 * P, W + 2 * P), dtype=dcol.dtype)
    for i in range(KH):
        for j in range(KW):
            dx_padded[:, :, i:i + OH, j:j + OW] += dcol[:, i, j]
    return dx_padded[:, :, P:P + H, P:P + W].transpose(1, 0, 2, 3)     # (N, C, H, W)
