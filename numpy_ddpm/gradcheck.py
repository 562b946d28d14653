"""`python -m numpy_ddpm.gradcheck`: the finite-difference checks (nn/gradcheck.py) as a table
over every layer and both of the lecture's models. The checks themselves, and the names this
module had before, are nn/gradcheck.py's."""

from . import backend
from .models import LabelAppender, TimeAppender, convnet, mlp
from .nn import Conv2d, Linear, ReLU, Sequential, SoftmaxCrossEntropy
from .nn.gradcheck import (  # noqa: F401
    LossLayer,
    away_from_kinks,
    check,
    gradients,
    numerical_gradient,
    projection,
    rel_error,
    relu_margin,
)


def _cases():
    """(label, layer, x, args) for the table: every layer, and both models small and full."""
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
    small = Sequential(Linear(3, 8, rng), ReLU(), Linear(8, 2, rng))
    yield "Sequential(Linear, ReLU, Linear)", *kink_free(small, (4, 3))
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
    classifier = Sequential(Linear(5, 10, rng), LossLayer(SoftmaxCrossEntropy(), labels))
    yield ("Linear(5, 10), SoftmaxCrossEntropy", classifier,
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
