"""The U-Net's up path: nearest-neighbour upsampling, and the channel concatenation that joins
each skip connection to it. (Downsampling is a stride-2 Conv2d.)"""

from .. import backend
from .module import Module


class Upsample(Module):
    """Nearest-neighbour upsampling by 2: each pixel becomes a 2x2 block of copies.

    x: (N, C, H, W)   y: (N, C, 2H, 2W),   y[n, c, i, j] = x[n, c, i // 2, j // 2]
    """

    def forward(self, x):
        N, C, H, W = x.shape
        copies = backend.xp.broadcast_to(x[:, :, :, None, :, None], (N, C, H, 2, W, 2))
        return copies.reshape(N, C, 2 * H, 2 * W)

    def backward(self, dy):
        N, C, H2, W2 = dy.shape
        # every input pixel was copied into one 2x2 window: its gradient is the window's sum
        return dy.reshape(N, C, H2 // 2, 2, W2 // 2, 2).sum(axis=(3, 5))       # (N, C, H, W)


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
