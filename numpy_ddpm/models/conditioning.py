"""How the time t and the labels enter the models. Every model receives the network time
(network_time, with its inverse step_of beside it); the lecture's models append it to the input
as one more column or channel (TimeAppender), and a label as a one-hot code of K + 1 classes
(LabelAppender)."""

from .. import backend
from ..nn import Module


def network_time(step, T, dtype=None):
    """What a model sees of the step index k (0..T-1): k / (T - 1) - 0.5, in [-0.5, 0.5]. A float
    for one index (a Python int: the whole batch's step), else an array of `dtype` (default the
    working dtype) for indices per example (N,)."""
    if not hasattr(step, "astype"):
        return step / (T - 1) - 0.5
    return step.astype(dtype or backend.dtype) / (T - 1) - 0.5


def step_of(t, T):
    """The inverse of network_time: the step k = round((t + 0.5) (T - 1)), float64 (a float or an
    array (N,)). Exact for the integers 0..T-1 even from float32 t: float32's rounding of t (about
    1e-7), times T - 1 = 999, is about 1e-4, far from the 0.5 that would round to a neighbour."""
    xp = backend.xp
    return xp.rint((xp.asarray(t, dtype=xp.float64) + 0.5) * (T - 1))


class TimeAppender(Module):
    """Appends the time t to the input, as in the lecture.

    x: (N, D)        -> (N, D + 1), t as one more column;
    x: (N, C, H, W)  -> (N, C + 1, H, W), t as one more constant channel.
    t: a Python float (the same time for the whole batch) or an array of shape (N,).
    """

    takes = ("t",)

    def forward(self, x, t):
        xp = backend.xp
        N = x.shape[0]
        if isinstance(t, (int, float)):
            t = xp.full((N,), t, dtype=x.dtype)
        t = t.astype(x.dtype, copy=False).reshape((N, 1) + (1,) * (x.ndim - 2))
        t = xp.broadcast_to(t, (N, 1) + x.shape[2:])                  # (N, 1, ...)
        return xp.concatenate((x, t), axis=1)

    def backward(self, dy):
        return dy[:, :-1]                   # the time column carries no gradient to x


class LabelAppender(Module):
    """Appends the label y as a one-hot code of K + 1 classes (class K: "no label"), the way
    TimeAppender appends t: the next layer's weights on these columns act as a learned class
    embedding (classifier-free guidance, Ho & Salimans 2022).

    x: (N, D)        -> (N, D + K + 1), the code as K + 1 more columns;
    x: (N, C, H, W)  -> (N, C + K + 1, H, W), as K + 1 more constant channels.
    labels: (N,) integers in 0..K.
    """

    takes = ("labels",)

    def __init__(self, nb_classes):
        self.nb_classes = nb_classes        # K

    def forward(self, x, labels):
        xp = backend.xp
        N, K = x.shape[0], self.nb_classes
        one_hot = (xp.asarray(labels).reshape(N, 1) == xp.arange(K + 1)).astype(x.dtype)      # (N, K + 1)
        one_hot = one_hot.reshape((N, K + 1) + (1,) * (x.ndim - 2))
        one_hot = xp.broadcast_to(one_hot, (N, K + 1) + x.shape[2:])             # (N, K + 1, ...)
        return xp.concatenate((x, one_hot), axis=1)

    def backward(self, dy):
        return dy[:, :-(self.nb_classes + 1)]   # the label is an integer: no gradient goes to it
