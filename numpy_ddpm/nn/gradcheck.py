"""Finite-difference checks of the hand-written backward passes.

For a layer with output y = f(x), draw a *random* upstream gradient dy and take the scalar
L = sum(y * dy): its exact gradients are what `backward(dy)` returns (for x) and accumulates
(for each parameter). Central differences, in float64, estimate the same numbers:

    dL/dp ~ (L(p + h) - L(p - h)) / 2h     for each entry p of x and of every parameter

and the check reports, per array, the maximum relative error |a - n| / max(1e-8, |a| + |n|).

The networks are piecewise linear (ReLU), so away from a kink the central difference is exact
up to rounding; a perturbation that crosses a kink is a false alarm. `away_from_kinks` draws
inputs whose every ReLU input is at least a margin from zero, so the bound can stay tight.

`python -m numpy_ddpm.gradcheck` prints a table over every layer and both models.
"""

from .. import backend
from .layers import ReLU
from .module import Module


def rel_error(analytic, numeric):
    """max |a - n| / max(1e-8, |a| + |n|) over all entries."""
    xp = backend.xp
    a, n = analytic, numeric
    return float((xp.abs(a - n) / xp.maximum(1e-8, xp.abs(a) + xp.abs(n))).max())


def projection(dy):
    """L(y) = sum(y * dy): the difference L(y+) - L(y-), with the outputs subtracted first,
    which keeps the rounding error of a large sum out of the difference."""
    return lambda y_plus, y_minus: ((y_plus - y_minus) * dy).sum()


def numerical_gradient(f, x, difference, h=1e-5, indices=None):
    """Central differences dL/dx ~ (L(f(x + h)) - L(f(x - h))) / 2h for each entry of the array
    x, which f reads and which is perturbed in place; `difference(y_plus, y_minus)` gives
    L(y_plus) - L(y_minus). `indices` (flat) restricts the entries estimated; the others are
    left at zero."""
    grad = backend.xp.zeros_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in (range(x.size) if indices is None else indices):
        saved = float(flat_x[i])
        flat_x[i] = saved + h
        y_plus = f()
        flat_x[i] = saved - h
        y_minus = f()
        flat_x[i] = saved
        flat_grad[i] = difference(y_plus, y_minus) / (2 * h)
    return grad


def relu_margin(layer, x, *args):
    """The smallest |input| of any ReLU in the tree of `layer` for this input (forward(x, *args)
    is run with each ReLU's input recorded on the way)."""
    inputs = []
    relus = [module for module in layer.modules() if isinstance(module, ReLU)]
    for relu in relus:              # an instance attribute shadows the class's forward for this run
        relu.forward = lambda x, relu=relu: inputs.append(float(backend.xp.abs(x).min())) or ReLU.forward(relu, x)
    try:
        layer.forward(x, *args)
    finally:
        for relu in relus:
            del relu.forward
    return min(inputs, default=float("inf"))


def away_from_kinks(layer, shape, *args, margin=1e-4, rng=None, tries=200):
    """A standard normal input of `shape` whose ReLU inputs all lie `margin` or more from 0."""
    rng = rng if rng is not None else backend.host_rng(0)
    for _ in range(tries):
        x = backend.asarray(rng.standard_normal(shape), dtype=backend.dtype)
        if relu_margin(layer, x, *args) >= margin:
            return x
    raise RuntimeError(f"no input of shape {shape} keeps its ReLUs {margin} from their kink")


class LossLayer(Module):
    """A loss against fixed targets, seen as a layer whose output is the loss, shape (1,), so it
    is checked like any layer: y = [loss(x, target)], backward(dy) = dy * dloss/dx."""

    def __init__(self, loss_fn, target):
        self.loss_fn, self.target = loss_fn, target

    def forward(self, x):
        return self.loss_fn.forward(x, self.target).reshape(1)

    def backward(self, dy):
        return self.loss_fn.backward() * dy


def check(layer, x, *args, **options):
    """Max relative error of `layer`'s backward for its input ("x") and every parameter
    (options as for `gradients`)."""
    return {name: rel_error(a, n) for name, (a, n) in gradients(layer, x, *args, **options).items()}


def gradients(layer, x, *args, rng=None, loss=None, h=1e-5, max_entries=None):
    """{name: (analytic, numeric)} gradients of `layer`'s input ("x") and of every parameter.

    `layer` must work in float64 (build it inside `backend.precision("float64")`); `args`
    are passed on to forward (the time t). With loss=(MSELoss(), target) the layer is checked
    composed with the loss, L = loss(layer(x), target), instead of a random projection.
    With `max_entries`, at most that many random entries of each array are checked.
    """
    rng = rng if rng is not None else backend.host_rng(0)
    xp = backend.xp
    y = layer.forward(x, *args)
    if loss is None:
        dy = backend.asarray(rng.standard_normal(y.shape), dtype=y.dtype)
        difference = projection(dy)
    else:
        loss_fn, target = loss
        loss_fn.forward(y, target)
        dy = loss_fn.backward()
        difference = lambda y_plus, y_minus: loss_fn.difference(y_plus, y_minus, target)  # noqa: E731

    layer.zero_grad()
    analytic = {"x": layer.backward(dy).copy()}
    analytic.update({name: grad.copy() for name, _, grad in layer.parameters()})
    arrays = {"x": x}
    arrays.update({name: param for name, param, _ in layer.parameters()})

    pairs = {}
    for name, array in arrays.items():
        indices = None
        if max_entries is not None and array.size > max_entries:
            indices = rng.choice(array.size, max_entries, replace=False).tolist()
        numeric = numerical_gradient(lambda: layer.forward(x, *args), array, difference, h=h, indices=indices)
        a = analytic[name]
        if indices is not None:
            a = a.reshape(-1)[xp.asarray(indices)]
            numeric = numeric.reshape(-1)[xp.asarray(indices)]
        pairs[name] = (a, numeric)
    return pairs
