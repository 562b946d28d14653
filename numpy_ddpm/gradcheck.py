"""Finite-difference checks of the hand-written backward passes.

For a layer with output y = f(x), draw a *random* upstream gradient dy and take the scalar
L = sum(y * dy): its exact gradients are what `backward(dy)` returns (for x) and accumulates
(for each parameter). Central differences, in float64, estimate the same numbers:

    dL/dp ~ (L(p + h) - L(p - h)) / 2h     for each entry p of x and of every parameter

and the check reports, per array, the maximum relative error |a - n| / max(1e-8, |a| + |n|).

The networks are piecewise linear (ReLU), so away from a kink the central difference is exact
up to rounding; a perturbation that crosses a kink is a false alarm. `away_from_kinks` draws
inputs whose every ReLU input is at least a margin from zero, so the bound can stay tight.

Run `python -m numpy_ddpm.gradcheck` for a table over every layer and both models.
"""

from . import backend


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
    """The smallest |input| of any ReLU in `layer` (a ReLU or a Sequential) for this input."""
    from .layers import ReLU, Sequential
    layers = layer.layers if isinstance(layer, Sequential) else [layer]
    margin = float("inf")
    for index, sub in enumerate(layers):
        if isinstance(sub, ReLU):
            margin = min(margin, float(backend.xp.abs(x).min()))
        x = sub.forward(x, *args[index:index + 1])      # t to the first layer, the label to the second
    return margin


def away_from_kinks(layer, shape, *args, margin=1e-4, rng=None, tries=200):
    """A standard normal input of `shape` whose ReLU inputs all lie `margin` or more from 0."""
    rng = rng if rng is not None else backend.host_rng(0)
    for _ in range(tries):
        x = backend.asarray(rng.standard_normal(shape), dtype=backend.dtype)
        if relu_margin(layer, x, *args) >= margin:
            return x
    raise RuntimeError(f"no input of shape {shape} keeps its ReLUs {margin} from their kink")


class LossLayer:
    """A loss against fixed targets, seen as a layer whose output is the loss, shape (1,), so it
    is checked like any layer: y = [loss(x, target)], backward(dy) = dy * dloss/dx."""

    param_names = {}

    def __init__(self, loss_fn, target):
        self.loss_fn, self.target = loss_fn, target

    def forward(self, x):
        return self.loss_fn.forward(x, self.target).reshape(1)

    def backward(self, dy):
        return self.loss_fn.backward() * dy

    def parameters(self):
        return iter(())

    def zero_grad(self):
        pass


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


def _cases():
    """(label, layer, x, args) for the table: every layer, and both models small and full."""
    from .layers import Conv2d, LabelAppender, Linear, ReLU, Sequential, SoftmaxCrossEntropy, TimeAppender
    from .models import convnet, mlp
    rng = backend.host_rng(1)

    def randn(*shape):
        return backend.asarray(rng.standard_normal(shape))

    def kink_free(layer, shape, *args, margin=1e-4):
        return layer, away_from_kinks(layer, shape, *args, margin=margin, rng=rng), args, margin / 10

    h = 1e-5
    yield "Linear(5, 7)", Linear(5, 7, rng), randn(4, 5), (), h
    yield "ReLU", *kink_free(ReLU(), (4, 6))
    yield "TimeAppender (N, D)", TimeAppender(), randn(4, 3), (randn(4),), h
    yield "TimeAppender (N, C, H, W)", TimeAppender(), randn(2, 2, 3, 3), (0.25,), h
    yield "Conv2d(3, 4, 3, padding=1)", Conv2d(3, 4, 3, 1, rng), randn(2, 3, 5, 6), (), h
    yield "Conv2d(2, 3, 5, padding=2)", Conv2d(2, 3, 5, 2, rng), randn(1, 2, 7, 5), (), h
    yield "Sequential(Linear, ReLU, Linear)", *kink_free(Sequential(Linear(3, 8, rng), ReLU(), Linear(8, 2, rng)), (4, 3))
    yield "mlp(2, hidden=256)", *kink_free(mlp(2), (8, 2), randn(8))
    yield "convnet(1, width=8, kernel_size=3)", *kink_free(convnet(1, width=8, kernel_size=3), (2, 1, 6, 6), 0.1)
    yield "convnet(1) (lecture's, 8x8)", *kink_free(convnet(1), (1, 1, 8, 8), -0.3, margin=3e-6)
    classes = backend.asarray(rng.integers(0, 4, 8))          # labels in 0..K, K = 3 the "no label"
    yield "LabelAppender(3) (N, D)", LabelAppender(3), randn(8, 2), (classes,), h
    yield "LabelAppender(3) (N, C, H, W)", LabelAppender(3), randn(8, 1, 3, 3), (classes,), h
    yield "mlp(2, hidden=256, nb_classes=3)", *kink_free(mlp(2, nb_classes=3), (8, 2), randn(8), classes)
    yield ("convnet(1, width=8, kernel_size=3, nb_classes=3)",
           *kink_free(convnet(1, width=8, kernel_size=3, nb_classes=3), (2, 1, 6, 6), 0.1, classes[:2]))
    labels = backend.asarray(rng.integers(0, 10, 6))
    yield "SoftmaxCrossEntropy (6, 10)", LossLayer(SoftmaxCrossEntropy(), labels), randn(6, 10), (), h
    yield ("Linear(5, 10), SoftmaxCrossEntropy", Sequential(Linear(5, 10, rng), LossLayer(SoftmaxCrossEntropy(), labels)),
           randn(6, 5), (), h)


def main():
    print("Finite-difference gradient checks (float64, central differences with step h = margin / 10,")
    print("random upstream gradient, inputs a margin of 1e-4 (3e-6 for the lecture's conv net,")
    print("whose 24576 ReLUs leave no wider one) away from every ReLU kink; arrays of over 300")
    print("entries: 300 random ones). rel: max |a - n| / max(1e-8, |a| + |n|); abs: max |a - n|,")
    print("next to max |a|. A relative error above 1e-6 comes from entries whose gradient is as small")
    print("as the rounding error of the central difference itself (the abs column), not from the")
    print("backward pass: its absolute error stays at that rounding level.\n")
    print(f"{'layer or model':<38} {'array':<10} {'entries':>8} {'rel':>9} {'abs':>9} {'max |a|':>9}")
    xp = backend.xp
    worst = 0.0
    with backend.precision("float64"):
        for label, layer, x, args, h in _cases():
            pairs = gradients(layer, x, *args, h=h, max_entries=300)
            sizes = {"x": x.size, **{name: p.size for name, p, _ in layer.parameters()}}
            for name, (a, n) in pairs.items():
                error = rel_error(a, n)
                print(f"{label:<38} {name:<10} {sizes[name]:>8} {error:>9.1e} "
                      f"{float(xp.abs(a - n).max()):>9.1e} {float(xp.abs(a).max()):>9.1e}")
                label = ""
                worst = max(worst, error)
    print(f"\nworst relative error: {worst:.1e}")


if __name__ == "__main__":
    main()
