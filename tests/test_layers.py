"""Finite-difference checks of every hand-written backward pass, and the im2col convolution
against a plain-loop convolution."""

import numpy as np
import pytest

from numpy_ddpm import backend, gradcheck
from numpy_ddpm.layers import Conv2d, Dropout, Linear, MSELoss, ReLU, Sequential, SoftmaxCrossEntropy, TimeAppender
from numpy_ddpm.models import convnet, mlp

from conftest import to_np

BOUND = 1e-6


def randn(rng, *shape):
    return backend.asarray(rng.standard_normal(shape), dtype=backend.dtype)


def assert_all_checked(errors, layer):
    names = {"x"} | {name for name, _, _ in layer.parameters()}
    assert set(errors) == names
    worst = max(errors.values())
    assert worst < BOUND, errors


def test_linear(float64):
    rng = np.random.default_rng(0)
    layer = Linear(5, 7, rng)
    assert layer.w.shape == (7, 5) and layer.b.shape == (7,)
    assert_all_checked(gradcheck.check(layer, randn(rng, 4, 5), rng=rng), layer)


def test_relu(float64):
    rng = np.random.default_rng(1)
    layer = ReLU()
    x = gradcheck.away_from_kinks(layer, (6, 9), rng=rng)
    assert_all_checked(gradcheck.check(layer, x, rng=rng), layer)


class FixedDraws:
    """A stand-in generator whose `random` returns the same uniforms at every call, so each
    forward pass of a finite-difference check drops the same elements."""

    def __init__(self, u):
        self.u = u

    def random(self, shape, dtype):
        assert shape == self.u.shape
        return self.u.astype(dtype)


def test_dropout(float64):
    rng = np.random.default_rng(9)
    u = backend.asarray(rng.uniform(size=(6, 9)))
    layer = Dropout(0.3, FixedDraws(u))
    x = randn(rng, 6, 9)
    np.testing.assert_allclose(to_np(layer.forward(x)), to_np(x) * (to_np(u) >= 0.3) / 0.7)
    assert layer.mask.dtype == bool                             # a byte an element is kept, not a float
    assert_all_checked(gradcheck.check(layer, x, rng=rng), layer)
    layer.training = False
    assert layer.forward(x) is x


def test_dropout_keeps_the_mean(xp_backend):
    layer = Dropout(0.5, backend.default_rng(0))
    x = backend.xp.ones((1000, 100), dtype=backend.dtype)
    y, y_again = to_np(layer.forward(x)), to_np(layer.forward(x))
    assert y.dtype == x.dtype and set(np.unique(y)) == {0.0, 2.0}
    assert abs((y == 0).mean() - 0.5) < 0.01 and abs(y.mean() - 1) < 0.02
    assert np.any(y != y_again)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0, backend.default_rng(0))


@pytest.mark.parametrize("shape,t", [((4, 3), "array"), ((4, 3), 0.3), ((2, 3, 4, 5), "array"), ((2, 1, 3, 3), -0.5)])
def test_time_appender(float64, shape, t):
    rng = np.random.default_rng(2)
    layer = TimeAppender()
    x = randn(rng, *shape)
    t = randn(rng, shape[0]) if t == "array" else t
    y = to_np(layer.forward(x, t))
    assert y.shape == (shape[0], shape[1] + 1) + shape[2:]
    np.testing.assert_array_equal(y[:, :-1], to_np(x))
    expected_t = to_np(t) if not isinstance(t, float) else np.full(shape[0], t)
    for n in range(shape[0]):
        assert np.all(y[n, -1] == expected_t[n])
    assert_all_checked(gradcheck.check(layer, x, t, rng=rng), layer)


CONV_CASES = [
    # (N, C, O, H, W, K, P)
    (1, 1, 1, 5, 5, 1, 0),
    (2, 3, 4, 5, 6, 3, 1),
    (1, 2, 3, 7, 5, 5, 2),
    (3, 4, 2, 6, 6, 3, 0),
    (2, 2, 5, 4, 7, 5, 1),
]


@pytest.mark.parametrize("N,C,O,H,W,K,P", CONV_CASES)
def test_conv2d_gradients(float64, N, C, O, H, W, K, P):
    rng = np.random.default_rng(3)
    layer = Conv2d(C, O, K, P, rng)
    assert layer.w.shape == (O, C, K, K) and layer.b.shape == (O,)
    assert_all_checked(gradcheck.check(layer, randn(rng, N, C, H, W), rng=rng), layer)


def naive_conv(x, w, b, P):
    """The definition, one output at a time: y[n, o, i, j] = b[o] + sum_{c,ki,kj} w[o,c,ki,kj] xpad[n,c,i+ki,j+kj]."""
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
    OH, OW = H + 2 * P - KH + 1, W + 2 * P - KW + 1
    y = np.zeros((N, O, OH, OW))
    for n in range(N):
        for o in range(O):
            for i in range(OH):
                for j in range(OW):
                    y[n, o, i, j] = b[o] + np.sum(w[o] * xpad[n, :, i:i + KH, j:j + KW])
    return y


def naive_conv_backward(x, w, P, dy):
    """Gradients by the same loops: each output spreads dy back to the window it read."""
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
    dxpad, dw = np.zeros_like(xpad), np.zeros_like(w)
    for n in range(N):
        for o in range(O):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    dxpad[n, :, i:i + KH, j:j + KW] += w[o] * dy[n, o, i, j]
                    dw[o] += xpad[n, :, i:i + KH, j:j + KW] * dy[n, o, i, j]
    return dxpad[:, :, P:P + H, P:P + W], dw, dy.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("N,C,O,H,W,K,P", CONV_CASES)
@pytest.mark.parametrize("columns", ["kept", "chunked", "rebuilt"])
def test_conv2d_against_loops(xp_backend, float64, N, C, O, H, W, K, P, columns):
    rng = np.random.default_rng(4)
    layer = Conv2d(C, O, K, P, rng, algorithm="im2col")       # its columns kept, chunked or rebuilt
    if columns == "chunked":  # a budget of one image's columns forces the chunked path
        layer.max_col_bytes = C * K * K * (H + 2 * P - K + 1) * (W + 2 * P - K + 1) * 8
        assert len(layer._chunks((N, C, H, W))) == N
    layer.max_kept_bytes = 2**30 if columns == "kept" else 0
    x = rng.standard_normal((N, C, H, W))
    y = layer.forward(backend.asarray(x))
    np.testing.assert_allclose(to_np(y), naive_conv(x, to_np(layer.w), to_np(layer.b), P), rtol=1e-10, atol=1e-12)
    assert (layer.used.col is not None) == (columns == "kept")
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(backend.asarray(dy))
    dx_ref, dw_ref, db_ref = naive_conv_backward(x, to_np(layer.w), P, dy)
    np.testing.assert_allclose(to_np(dx), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_np(layer.dw), dw_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_np(layer.db), db_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["C-ordered", "batch last", "batch second", "strided"])
def test_pointwise_convolution_against_loops(xp_backend, float64, layout):
    """A 1x1 kernel ("auto") is one product over the channels on x where it lies: the same
    outputs and gradients as the loops, in the memory order x came in (Winograd's batch-last,
    im2col's batch-second) without copying it, and from a copy otherwise."""
    rng = np.random.default_rng(6)
    N, C, O, H, W = 3, 4, 5, 6, 7
    layer = Conv2d(C, O, 1, 0, rng)
    x, dy = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, O, H, W))
    stored = {"C-ordered": (0, 1, 2, 3), "batch last": (1, 2, 3, 0), "batch second": (1, 0, 2, 3),
              "strided": (3, 0, 2, 1)}[layout]                      # the axes of x in memory, outermost first

    def laid_out(a):
        inverse = sorted(range(4), key=stored.__getitem__)
        return backend.xp.ascontiguousarray(backend.asarray(a).transpose(stored)).transpose(inverse)

    x_dev = laid_out(x)
    y = layer.forward(x_dev)
    assert type(layer.used).__name__ == "PointwiseConvolution"
    np.testing.assert_allclose(to_np(y), naive_conv(x, to_np(layer.w), to_np(layer.b), 0), rtol=1e-10, atol=1e-12)
    if layout in ("batch last", "batch second"):        # y in x's order: channel first, the rest as in x
        assert y.transpose(stored).flags.c_contiguous
    dx = layer.backward(laid_out(dy))
    dx_ref, dw_ref, db_ref = naive_conv_backward(x, to_np(layer.w), 0, dy)
    for ours, reference in ((dx, dx_ref), (layer.dw, dw_ref), (layer.db, db_ref)):
        np.testing.assert_allclose(to_np(ours), reference, rtol=1e-10, atol=1e-12)
    assert not vars(layer.used), "the pointwise path keeps nothing but the layer's x"


def test_parameter_gradients_accumulate(float64):
    rng = np.random.default_rng(5)
    layer = Linear(3, 2, rng)
    x, dy = randn(rng, 4, 3), randn(rng, 4, 2)
    layer.forward(x)
    layer.backward(dy)
    once = to_np(layer.dw).copy()
    layer.backward(dy)
    np.testing.assert_allclose(to_np(layer.dw), 2 * once)
    layer.zero_grad()
    assert not np.any(to_np(layer.dw))


def test_sequential(float64):
    rng = np.random.default_rng(6)
    model = Sequential(Linear(3, 8, rng), ReLU(), Linear(8, 4, rng), ReLU(), Linear(4, 2, rng))
    x = gradcheck.away_from_kinks(model, (5, 3), rng=rng)
    assert_all_checked(gradcheck.check(model, x, rng=rng), model)


def test_mlp(float64):
    rng = np.random.default_rng(7)
    model = mlp(2, hidden=32, seed=1)
    t = randn(rng, 6)
    x = gradcheck.away_from_kinks(model, (6, 2), t, rng=rng)
    assert_all_checked(gradcheck.check(model, x, t, rng=rng), model)


def test_small_convnet(float64):
    rng = np.random.default_rng(8)
    model = convnet(2, width=4, kernel_size=3, seed=1)
    x = gradcheck.away_from_kinks(model, (2, 2, 5, 4), 0.2, rng=rng)
    assert_all_checked(gradcheck.check(model, x, 0.2, rng=rng), model)


@pytest.mark.parametrize("make,shape,t,seed", [
    (lambda: mlp(3, hidden=16, seed=2), (5, 3), "array", 9),
    (lambda: convnet(1, width=4, kernel_size=3, seed=3), (2, 1, 4, 5), -0.1, 3),
])
def test_mse_composed_with_model(float64, make, shape, t, seed):
    """A fixed draw: in a deep, narrow conv net some weights reach the loss only through
    near-dead paths, with gradients near 1e-9, where float64 central differences round to
    about 1e-13 and the relative error of that one entry says nothing about the backward."""
    rng = np.random.default_rng(seed)
    model = make()
    t = randn(rng, shape[0]) if t == "array" else t
    x = gradcheck.away_from_kinks(model, shape, t, rng=rng)
    target = randn(rng, *shape)
    assert_all_checked(gradcheck.check(model, x, t, rng=rng, loss=(MSELoss(), target)), model)


def test_softmax_cross_entropy(float64):
    """The loss against its definition (stable at logits of +-1000), dloss/dlogits against
    central differences with a random upstream scalar, and composed with a Linear layer."""
    rng = np.random.default_rng(12)
    z, labels = randn(rng, 6, 10), backend.asarray(rng.integers(0, 10, 6))
    loss = SoftmaxCrossEntropy()
    p = np.exp(to_np(z)) / np.exp(to_np(z)).sum(axis=1, keepdims=True)
    assert np.isclose(float(loss.forward(z, labels)), -np.log(p[np.arange(6), to_np(labels)]).mean())
    as_layer = gradcheck.LossLayer(loss, labels)
    assert_all_checked(gradcheck.check(as_layer, z, rng=rng), as_layer)
    model = Linear(5, 10, rng)
    assert_all_checked(gradcheck.check(model, randn(rng, 6, 5), rng=rng, loss=(SoftmaxCrossEntropy(), labels)), model)
    extreme = backend.asarray([[1000.0, 0.0, -1000.0]])
    for label, expected in ((0, 0.0), (2, 2000.0)):
        assert float(loss.forward(extreme, backend.asarray([label]))) == pytest.approx(expected)
        assert np.all(np.isfinite(to_np(loss.backward())))


def test_gradcheck_catches_a_wrong_backward(float64):
    """The checker itself must fail on a backward that is slightly wrong."""
    rng = np.random.default_rng(10)

    class Wrong(Linear):
        def backward(self, dy):
            dx = super().backward(dy)
            self.dw *= 1.001
            return dx

    errors = gradcheck.check(Wrong(3, 4, rng), randn(rng, 2, 3), rng=rng)
    assert errors["weight"] > 1e-4 and errors["x"] < BOUND


def test_model_contract():
    model = mlp(2, hidden=8)
    names = [name for name, _, _ in model.parameters()]
    assert names == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias", "7.weight", "7.bias"]
    shapes = [p.shape for _, p, _ in model.parameters()]
    assert shapes == [(8, 3), (8,), (8, 8), (8,), (8, 8), (8,), (2, 8), (2,)]
    _, param, grad = next(model.parameters())
    param[0, 0] = 123.0                       # live arrays: writing changes the model
    assert model.layers[1].w[0, 0] == 123.0
    assert model.flat_params[0] == 123.0
    conv = convnet(1, width=4)
    assert [p.shape for _, p, _ in conv.parameters()][:2] == [(4, 2, 5, 5), (4,)]
    assert all(p.dtype == np.float32 for _, p, _ in conv.parameters())


def test_linear_initialisation_matches_pytorch_bounds():
    layer = Linear(100, 50, np.random.default_rng(0))
    w, b = to_np(layer.w), to_np(layer.b)
    assert np.abs(w).max() <= 0.1 and np.abs(w).max() > 0.09
    assert np.abs(b).max() <= 0.1
    assert abs(w.std() - 0.1 / np.sqrt(3)) < 0.005     # the std of U(-0.1, 0.1)


def test_shared_buffers_keep_padding_zero(float64):
    """Two convolutions sharing work buffers, whose padded inputs have the same shape but
    different paddings (10 + 2*1 = 8 + 2*2), still compute the convolution of each."""
    from numpy_ddpm.nn.im2col import Buffers, im2col
    rng = np.random.default_rng(11)
    shared = Buffers()
    a, b = rng.standard_normal((2, 3, 10, 10)), rng.standard_normal((2, 3, 8, 8))
    for x, P in ((a, 1), (b, 2), (a, 1)):
        np.testing.assert_array_equal(im2col(x, 3, 3, P, shared), im2col(x, 3, 3, P))
