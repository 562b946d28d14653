"""GroupNorm (Wu & He, 2018): the normalisation of every block of the paper's U-Net."""

from .. import backend
from .module import Module


def scale_shift(centred, inv_sigma, gamma, beta):
    """GroupNorm's element-wise end while training: (xhat, y) with xhat = centred * inv_sigma
    (scaled in place) and y = xhat * gamma + beta. centred (N, G, C/G, H*W), inv_sigma
    (N, G, 1, 1), gamma and beta (G, C/G, 1)."""
    centred *= inv_sigma
    y = centred * gamma
    y += beta
    return centred, y


def scale_shift_in_place(centred, inv_sigma, gamma, beta):
    """GroupNorm's element-wise end while sampling: y = centred * inv_sigma * gamma + beta,
    written over centred (scale_shift's y, bit for bit; no xhat kept)."""
    centred *= inv_sigma
    centred *= gamma
    centred += beta
    return centred


class GroupNorm(Module):
    """Normalise each sample's channels in G groups, then scale and shift each channel,
    as torch.nn.GroupNorm:

        mean, var over the group's (C/G, H, W) entries of one sample (var: the population variance)
        xhat = (x - mean) / sqrt(var + eps)
        y = xhat * gamma + beta

    x: (N, C, H, W) or (N, C)   gamma, beta: (C,)   y: the shape of x
    The variance takes two passes (the mean first, then the mean of squared deviations): the
    one-pass E[x^2] - E[x]^2 loses every digit in float32 once |mean| >> std.
    """

    param_names = {"gamma": "weight", "beta": "bias"}

    def __init__(self, groups, channels, eps=1e-5):
        if channels % groups:
            raise ValueError(f"GroupNorm's {groups} groups do not divide its {channels} channels")
        self.G, self.C, self.eps = groups, channels, eps
        self.gamma = backend.xp.ones(channels, dtype=backend.dtype)
        self.beta = backend.xp.zeros(channels, dtype=backend.dtype)
        self.dgamma = backend.xp.zeros_like(self.gamma)
        self.dbeta = backend.xp.zeros_like(self.beta)

    def _per_channel(self, p, ndim):
        """A (C,) parameter shaped to broadcast against x: (C, 1, 1) for images, (C,) for vectors."""
        return p.reshape((self.C,) + (1,) * (ndim - 2))

    def forward(self, x):
        xp = backend.xp
        N, G = x.shape[0], self.G
        xg = x.reshape(N, G, -1)                                          # (N, G, C/G * H * W): one row per group
        mean = xg.mean(axis=-1, keepdims=True)                            # (N, G, 1)
        centred = xg - mean
        var = (centred * centred).mean(axis=-1, keepdims=True)            # (N, G, 1), the second pass
        inv_sigma = 1 / xp.sqrt(var + self.eps)                           # (N, G, 1)
        # The rest is element-wise, on (N, G, C/G, H*W) views: inv_sigma per group, gamma and beta
        # per channel, all broadcast (on cupy: one fused kernel)
        args = (centred.reshape(N, G, self.C // G, -1), inv_sigma.reshape(N, G, 1, 1),
                self.gamma.reshape(G, -1, 1), self.beta.reshape(G, -1, 1))
        if self.training:                                                 # xhat is kept for backward
            xhat, y = backend.fused("groupnorm_scale_shift", scale_shift)(*args)
            self.inv_sigma, self.xhat = inv_sigma, xhat.reshape(x.shape)
        else:                                                             # sampling: in place, nothing kept
            y = backend.fused("groupnorm_scale_shift_in_place", scale_shift_in_place)(*args)
        return y.reshape(x.shape)                                         # the shape of x

    def backward(self, dy):
        N = dy.shape[0]
        axes = (0,) + tuple(range(2, dy.ndim))                            # all but the channels
        self.dgamma += (dy * self.xhat).sum(axis=axes)                    # dL/dgamma = sum dy xhat  (C,)
        self.dbeta += dy.sum(axis=axes)                                   # dL/dbeta = sum dy        (C,)
        dxhat = (dy * self._per_channel(self.gamma, dy.ndim)).reshape(N, self.G, -1)
        xhat = self.xhat.reshape(N, self.G, -1)
        # In a group of M entries, xhat_i = (x_i - mean) / sigma with dmean/dx_j = 1/M and
        # dsigma/dx_j = xhat_j / (M sigma), so dxhat_i/dx_j = (delta_ij - 1/M - xhat_i xhat_j / M) / sigma:
        # dx_j = (dxhat_j - mean(dxhat) - xhat_j mean(dxhat xhat)) / sigma
        dx = (dxhat - dxhat.mean(axis=-1, keepdims=True)
              - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)) * self.inv_sigma
        return dx.reshape(dy.shape)                                       # the shape of x
