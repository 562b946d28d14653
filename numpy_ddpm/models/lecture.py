"""The lecture's two denoisers, eps_theta(x_t, t), built from the hand-written layers, and
their class-conditional versions eps_theta(x_t, t, y) for classifier-free guidance.

Both take `forward(x, t)` with t the network time t / (T - 1) - 0.5 (a float or an (N,)
array) and return eps_hat of the shape of x; `backward(grad_eps_hat)` returns grad_x and
accumulates the parameter gradients. With nb_classes=K they take `forward(x, t, labels)`,
labels (N,) integers in 0..K (K: "no label"), fed like the time: a LabelAppender after the
TimeAppender adds K + 1 one-hot columns (or channels), and the first layer grows by as many
inputs. `model.nb_classes` is K (None: unconditional, today's model, parameter for parameter).
"""

from .. import backend
from ..nn import Conv2d, Linear, ReLU, Sequential
from .conditioning import LabelAppender, TimeAppender


class Denoiser(Sequential):
    """A Sequential that says what it is: `description` ({"name": ..., "kwargs": ...}, from
    which models.build makes it again) and `nb_classes` (K, or None: unconditional)."""

    def __init__(self, layers, description, nb_classes=None):
        super().__init__(*layers)
        self.description, self.nb_classes = description, nb_classes


def _appenders(nb_classes):
    """The layers that append the conditioning, and how many columns or channels they add."""
    if nb_classes is None:
        return [TimeAppender()], 1
    return [TimeAppender(), LabelAppender(nb_classes)], 1 + nb_classes + 1


def _description(name, **kwargs):
    return {"name": name, "kwargs": {key: value for key, value in kwargs.items() if value is not None}}


def mlp(dim, hidden=256, seed=0, nb_classes=None):
    """TimeAppender, then Linear(dim + 1, hidden), ReLU, twice Linear(hidden, hidden), ReLU,
    and Linear(hidden, dim): the lecture's model for vectors. x: (N, dim). With nb_classes=K,
    a LabelAppender follows the TimeAppender and the first layer is Linear(dim + 1 + K + 1, hidden)."""
    rng = backend.host_rng(seed)
    appenders, extra = _appenders(nb_classes)
    layers = [
        *appenders,
        Linear(dim + extra, hidden, rng), ReLU(),
        Linear(hidden, hidden, rng), ReLU(),
        Linear(hidden, hidden, rng), ReLU(),
        Linear(hidden, dim, rng),
    ]
    return Denoiser(layers, _description("mlp", dim=dim, hidden=hidden, nb_classes=nb_classes), nb_classes)


def convnet(channels, width=64, kernel_size=5, seed=0, nb_classes=None):
    """TimeAppender (one more channel), Conv2d(channels + 1, width), five Conv2d(width, width),
    each followed by ReLU, and Conv2d(width, channels); padding kernel_size // 2 keeps the
    image size: the lecture's model for images. x: (N, channels, H, W). With nb_classes=K, a
    LabelAppender adds K + 1 constant channels and the first layer is Conv2d(channels + K + 2, width)."""
    rng = backend.host_rng(seed)
    padding = kernel_size // 2
    appenders, extra = _appenders(nb_classes)
    layers = [*appenders, Conv2d(channels + extra, width, kernel_size, padding, rng), ReLU()]
    for _ in range(5):
        layers += [Conv2d(width, width, kernel_size, padding, rng), ReLU()]
    layers.append(Conv2d(width, channels, kernel_size, padding, rng))
    description = _description("convnet", channels=channels, width=width, kernel_size=kernel_size,
                               nb_classes=nb_classes)
    return Denoiser(layers, description, nb_classes)
