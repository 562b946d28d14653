"""The lecture's two denoisers, eps_theta(x_t, t), built from the hand-written layers.

Both take `forward(x, t)` with t the network time t / (T - 1) - 0.5 (a float or an (N,)
array) and return eps_hat of the shape of x; `backward(grad_eps_hat)` returns grad_x and
accumulates the parameter gradients.
"""

from . import backend
from .layers import Conv2d, Linear, ReLU, Sequential, TimeAppender


def mlp(dim, hidden=256, seed=0):
    """TimeAppender, then Linear(dim + 1, hidden), ReLU, twice Linear(hidden, hidden), ReLU,
    and Linear(hidden, dim): the lecture's model for vectors. x: (N, dim)."""
    rng = backend.host_rng(seed)
    return Sequential(
        TimeAppender(),
        Linear(dim + 1, hidden, rng), ReLU(),
        Linear(hidden, hidden, rng), ReLU(),
        Linear(hidden, hidden, rng), ReLU(),
        Linear(hidden, dim, rng),
    )


def convnet(channels, width=64, kernel_size=5, seed=0):
    """TimeAppender (one more channel), Conv2d(channels + 1, width), five Conv2d(width, width),
    each followed by ReLU, and Conv2d(width, channels); padding kernel_size // 2 keeps the
    image size: the lecture's model for images. x: (N, channels, H, W)."""
    rng = backend.host_rng(seed)
    padding = kernel_size // 2
    layers = [TimeAppender(), Conv2d(channels + 1, width, kernel_size, padding, rng), ReLU()]
    for _ in range(5):
        layers += [Conv2d(width, width, kernel_size, padding, rng), ReLU()]
    layers.append(Conv2d(width, channels, kernel_size, padding, rng))
    return Sequential(*layers)
