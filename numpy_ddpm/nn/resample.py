"""The U-Net's up path: nearest-neighbour upsampling, and the channel concatenation that joins
each skip connection to it. (Downsampling is a stride-2 Conv2d.)"""

from .. import backend
from .module import Module


class Upsample(Module):
    """Nearest-neighbour upsampling by 2: each pixel becomes a 2x2 block of copies.

    x: (N, C, H, W)   y: (N, C, 2H, 2W),   y[n, c, i, j] = x[n, c, i // 2, j // 2]

    Both passes write their result in the memory order of their input (module.py's layout
    contract: the batch-last storage Winograd hands on stays batch-last), one strided copy or sum
    per position in the 2x2 window.
    """

    def forward(self, x):
        N, C, H, W = x.shape
        y = backend.xp.empty_like(x, shape=(N, C, 2 * H, 2 * W))          # order "K": x's memory order
        for i in (0, 1):
            for j in (0, 1):
                y[:, :, i::2, j::2] = x
        return y

    def backward(self, dy):
        # every input pixel was copied into one 2x2 window: its gradient is the window's sum
        dx = dy[:, :, 0::2, 0::2] + dy[:, :, 0::2, 1::2]                     # (N, C, H, W)
        dx += dy[:, :, 1::2, 0::2]
        dx += dy[:, :, 1::2, 1::2]
        return dx


class Concat(Module):
    """y = [a, b] along the channels: the U-Net joins a skip connection to its up path.

    a: (N, CA, ...)   b: (N, CB, ...)   y: (N, CA + CB, ...)
    `backward(dy)` returns a PAIR (da, db): dy split back at channel CA (views into dy).
    """

    def forward(self, a, b):
        self.CA = a.shape[1]
        return backend.xp.concatenate((a, b), axis=1)

    def backward(self, dy):
        return dy[:, :self.CA], dy[:, self.CA:]
