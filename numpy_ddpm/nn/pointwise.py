"""The 1x1 convolution as one matrix product over the channels, in the memory order its input
comes in: the fast path beside im2col.py's reference for the U-Net's shortcuts.

A 1x1 kernel at stride 1 (so no padding) mixes the channels of each pixel alone,

    y[n, o, h, w] = sum_c w[o, c] x[n, c, h, w] + b[o],

so with the channels as rows and every pixel of every image as a column, y = w x + b is one
matrix product, whatever order the columns come in. im2col builds that matrix by copying x twice
(padded, then into columns); here x is read where it lies when its memory is channel first:
(C, H, W, N), the batch innermost, as Winograd's layers hand it on, or (C, N, H, W), as im2col's
do (module.py's layout contract). Any other order is copied once into (C, N, H, W). The output
comes in the input's order, and the backward reads the input the layer keeps anyway, so it keeps
nothing more (im2col keeps both copies, as large as x, for its backward).
"""

from .. import backend

ORDERS = ((1, 2, 3, 0), (1, 0, 2, 3))     # (C, H, W, N), then (C, N, H, W), as axes of (N, C, H, W)


def channel_rows(a):
    """(matrix, order): a (N, C, H, W) array as a (C, pixels) matrix, a view when its memory is in
    one of ORDERS (else a copy in the last), and the order of the axes that the columns follow."""
    for order in ORDERS:
        t = a.transpose(order)
        if t.flags.c_contiguous:
            return t.reshape(a.shape[1], -1), order
    order = ORDERS[-1]
    return backend.xp.ascontiguousarray(a.transpose(order)).reshape(a.shape[1], -1), order


def from_channel_rows(m, shape, order):
    """The (N, C', H, W) view of a (C', pixels) matrix whose columns follow `order`, shape being
    the (N, C, H, W) shape the columns came from."""
    transposed = (m.shape[0],) + tuple(shape[i] for i in order[1:])
    inverse = sorted(range(4), key=order.__getitem__)
    return m.reshape(transposed).transpose(inverse)


class PointwiseConvolution:
    """Conv2d's forward and backward for a 1x1 kernel at stride 1 (Conv2d's "auto" algorithm).

    x: (N, C, H, W)   w: (O, C, 1, 1)   y: (N, O, H, W), in the memory order of x
    """

    def forward(self, layer, x):
        O, C = layer.w.shape[:2]
        rows, order = channel_rows(x)                                     # (C, pixels)
        y = layer.w.reshape(O, C) @ rows                                  # (O, pixels)
        y += layer.b.reshape(O, 1)
        layer.x = x if layer.training else None          # sampling keeps nothing for a backward pass
        return from_channel_rows(y, x.shape, order)

    def backward(self, layer, dy):
        O, C = layer.w.shape[:2]
        rows, order = channel_rows(layer.x)                               # (C, pixels): a view, as in forward
        dy_rows = dy.transpose(order)                                     # its columns in the order of x's
        dy_rows = (dy_rows if dy_rows.flags.c_contiguous else backend.xp.ascontiguousarray(dy_rows)).reshape(O, -1)
        layer.dw += (dy_rows @ rows.T).reshape(layer.dw.shape)            # dL/dw = dy x^T  (O, C)
        layer.db += dy_rows.sum(axis=1)                                   # dL/db = sum over the pixels
        return from_channel_rows(layer.w.reshape(O, C).T @ dy_rows, layer.x.shape, order)   # dL/dx = w^T dy
