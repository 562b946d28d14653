"""Self-attention over the pixels of a feature map: the attention block of Ho et al.'s U-Net
(diffusion_tf, nn.py and unet.py's attn_block), one head, with its residual inside."""

import math

from .. import backend
from .layers import Linear
from .module import Module
from .norm import GroupNorm


class SelfAttention(Module):
    """Every position of the map attends to every other one:

        h = GroupNorm(x)
        q, k, v = h Wq^T + bq,  h Wk^T + bk,  h Wv^T + bv       1x1 projections over the channels
        w = softmax(q k^T / sqrt(C))                             over the H*W positions attended to
        a = w v
        y = x + proj(a)                                          proj starts at zero: y = x at first

    x, y: (N, C, H, W)   q, k, v, a: (N, HW, C)   w: (N, HW, HW)
    Each 1x1 projection is a Linear(C, C) applied to the (N*HW, C) rows of one position each.
    q, k and v are three layers, not one (3C, C) layer, so that they read, and are named, as in
    the paper's attn_block (q, k, v, proj_out); the three products do the work of the one.
    `proj`'s weight and bias start at zero, as the paper's, so each block begins as the identity.
    k's bias, kept as in the paper, changes nothing: it adds q . b_k to every score of a row,
    which the softmax cancels, so its gradient is zero.
    """

    def __init__(self, channels, groups, rng=None):
        rng = rng if rng is not None else backend.host_rng()
        self.norm = GroupNorm(groups, channels)
        self.q = Linear(channels, channels, rng)
        self.k = Linear(channels, channels, rng)
        self.v = Linear(channels, channels, rng)
        self.proj = Linear(channels, channels, rng)
        self.proj.w[...] = 0
        self.proj.b[...] = 0

    def forward(self, x):
        xp = backend.xp
        N, C, H, W = x.shape
        scale = 1 / math.sqrt(C)
        h = self.norm.forward(x)
        rows = h.transpose(0, 2, 3, 1).reshape(N * H * W, C)              # one row per position
        q = self.q.forward(rows).reshape(N, H * W, C)
        k = self.k.forward(rows).reshape(N, H * W, C)
        v = self.v.forward(rows).reshape(N, H * W, C)
        z = (q @ k.transpose(0, 2, 1)) * scale                            # (N, HW, HW)
        w = xp.exp(z - z.max(axis=-1, keepdims=True))                     # every exponent <= 0: no overflow
        w /= w.sum(axis=-1, keepdims=True)                                # softmax over the keys
        a = w @ v                                                         # (N, HW, C)
        out = self.proj.forward(a.reshape(N * H * W, C))                  # (N*HW, C)
        # sampling (train(False)) keeps no (N, HW, HW) weights between calls
        self.cache = (q, k, v, w) if self.training else None
        return x + out.reshape(N, H, W, C).transpose(0, 3, 1, 2)

    def backward(self, dy):
        N, C, H, W = dy.shape
        scale = 1 / math.sqrt(C)
        q, k, v, w = self.cache
        dout = dy.transpose(0, 2, 3, 1).reshape(N * H * W, C)
        da = self.proj.backward(dout).reshape(N, H * W, C)
        dw = da @ v.transpose(0, 2, 1)                                    # a = w v: dL/dw = da v^T  (N, HW, HW)
        dv = w.transpose(0, 2, 1) @ da                                    #          dL/dv = w^T da  (N, HW, C)
        # softmax: dw_i/dz_j = w_i (delta_ij - w_j), so dz_j = w_j (dw_j - sum_i dw_i w_i)
        dz = w * (dw - (dw * w).sum(axis=-1, keepdims=True))
        dz *= scale                                                       # z = q k^T * scale
        dq = dz @ k                                                       # (N, HW, C)
        dk = dz.transpose(0, 2, 1) @ q                                    # (N, HW, C)
        # q, k and v all read the same rows of h: their gradients add up
        drows = self.q.backward(dq.reshape(N * H * W, C))
        drows += self.k.backward(dk.reshape(N * H * W, C))
        drows += self.v.backward(dv.reshape(N * H * W, C))
        dh = drows.reshape(N, H, W, C).transpose(0, 3, 1, 2)
        return dy + self.norm.backward(dh)                                # the residual, then the norm path
