"""Strided convolution (Conv2d's stride S, im2col path): the forward against plain loops, the
backward against central differences, col2im as the adjoint of im2col, chunked and rebuilt
columns against the plain path, and stride 1 left exactly as it was."""

import numpy as np
import pytest

from numpy_ddpm import backend
from numpy_ddpm.nn import Conv2d, gradcheck
from numpy_ddpm.nn.im2col import Buffers, col2im, im2col, output_size

from conftest import to_np

BOUND = 1e-6


def randn(rng, *shape):
    return backend.asarray(rng.standard_normal(shape), dtype=backend.dtype)


def naive_conv(x, w, b, P, S):
    """The definition, one output at a time:
    y[n, o, oh, ow] = b[o] + sum_{c, i, j} w[o, c, i, j] x_padded[n, c, S*oh + i, S*ow + j]."""
    N, _, H, W = x.shape
    O, _, KH, KW = w.shape
    x_padded = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
    OH, OW = (H + 2 * P - KH) // S + 1, (W + 2 * P - KW) // S + 1
    y = np.zeros((N, O, OH, OW))
    for n in range(N):
        for o in range(O):
            for oh in range(OH):
                for ow in range(OW):
                    window = x_padded[n, :, S * oh:S * oh + KH, S * ow:S * ow + KW]
                    y[n, o, oh, ow] = b[o] + np.sum(w[o] * window)
    return y


FORWARD_CASES = [
    # (N, C, O, H, W, K, P, S), (OH, OW)
    ((3, 2, 4, 7, 7, 3, 1, 2), (4, 4)),
    ((3, 2, 4, 28, 28, 3, 1, 2), (14, 14)),
    ((3, 2, 4, 14, 14, 3, 1, 2), (7, 7)),
    ((3, 2, 4, 8, 5, 3, 1, 2), (4, 3)),
    ((3, 2, 4, 8, 8, 4, 1, 2), (4, 4)),
    ((3, 2, 4, 7, 8, 3, 0, 2), (3, 3)),
    ((2, 2, 3, 9, 10, 3, 1, 3), (3, 4)),
]


@pytest.mark.parametrize("case,out_size", FORWARD_CASES)
def test_forward_against_loops(xp_backend, float64, case, out_size):
    N, C, O, H, W, K, P, S = case
    rng = np.random.default_rng(0)
    layer = Conv2d(C, O, K, P, rng, stride=S)
    x = rng.standard_normal((N, C, H, W))
    y = to_np(layer.forward(backend.asarray(x)))
    assert output_size(H, W, K, K, P, S) == out_size
    assert y.shape == (N, O) + out_size
    np.testing.assert_allclose(y, naive_conv(x, to_np(layer.w), to_np(layer.b), P, S), rtol=0, atol=1e-12)


GRADIENT_CASES = [
    # (N, C, O, H, W, K, P, S)
    (2, 2, 3, 7, 7, 3, 1, 2),
    (2, 2, 3, 8, 6, 4, 1, 2),
    (2, 2, 3, 7, 8, 3, 0, 2),
]


@pytest.mark.parametrize("N,C,O,H,W,K,P,S", GRADIENT_CASES)
def test_gradients(float64, N, C, O, H, W, K, P, S):
    rng = np.random.default_rng(1)
    layer = Conv2d(C, O, K, P, rng, stride=S)
    errors = gradcheck.check(layer, randn(rng, N, C, H, W), rng=rng)
    assert set(errors) == {"x", "weight", "bias"}
    assert max(errors.values()) < BOUND, errors


@pytest.mark.parametrize("K,P,S", [(3, 1, 2), (4, 1, 2), (3, 0, 2), (3, 1, 3), (3, 1, 1)])
def test_col2im_is_the_adjoint_of_im2col(xp_backend, float64, K, P, S):
    """<im2col(x), c> = <x, col2im(c)> for every x and c: col2im is im2col's transpose."""
    rng = np.random.default_rng(2)
    N, C, H, W = 2, 3, 9, 8
    OH, OW = output_size(H, W, K, K, P, S)
    x, c = randn(rng, N, C, H, W), randn(rng, C * K * K, N * OH * OW)
    col = im2col(x, K, K, P, S=S)
    assert col.shape == c.shape
    lhs, rhs = float((col * c).sum()), float((x * col2im(c, x.shape, K, K, P, S=S)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs), (lhs, rhs)
    # kept buffers give the same answer twice: the padded sum is cleared at every call
    buffers = Buffers()
    for _ in range(2):
        np.testing.assert_array_equal(to_np(col2im(c, x.shape, K, K, P, buffers, S)),
                                      to_np(col2im(c, x.shape, K, K, P, S=S)))


def test_strided_columns_are_every_S_th_stride_1_column(float64):
    rng = np.random.default_rng(3)
    N, C, H, W, K, P, S = 2, 3, 9, 8, 3, 1, 2
    x = randn(rng, N, C, H, W)
    OH1, OW1 = output_size(H, W, K, K, P)
    OH, OW = output_size(H, W, K, K, P, S)
    col_1 = to_np(im2col(x, K, K, P)).reshape(C * K * K, N, OH1, OW1)
    col = to_np(im2col(x, K, K, P, S=S)).reshape(C * K * K, N, OH, OW)
    np.testing.assert_array_equal(col, col_1[:, :, ::S, ::S])


def _pass(layer, x, dy):
    """(y, dx, dw, db) of one forward and backward."""
    layer.zero_grad()
    y = to_np(layer.forward(x)).copy()
    dx = to_np(layer.backward(dy)).copy()
    return y, dx, to_np(layer.dw).copy(), to_np(layer.db).copy()


@pytest.mark.parametrize("K,P", [(3, 1), (4, 1)])
def test_chunked_and_rebuilt_columns_agree(xp_backend, float64, K, P):
    N, C, O, H, W, S = 3, 2, 4, 11, 9, 2
    rng = np.random.default_rng(4)
    x, dy = randn(rng, N, C, H, W), None
    results = {}
    for columns in ("kept", "chunked", "rebuilt", "chunked and rebuilt"):
        layer = Conv2d(C, O, K, P, np.random.default_rng(5), stride=S)
        if "chunked" in columns:  # a budget of one image's columns forces one chunk per image
            layer.max_col_bytes = layer._col_bytes((1, C, H, W))
            assert len(layer._chunks(x.shape)) == N
        if "rebuilt" in columns:
            layer.max_kept_bytes = 0
        if dy is None:
            dy = randn(rng, N, O, *output_size(H, W, K, K, P, S))
        results[columns] = _pass(layer, x, dy)
        assert layer.used.col is None       # backward lets the columns go
    kept = results.pop("kept")
    for columns, result in results.items():
        for name, a, b in zip(("y", "dx", "dw", "db"), result, kept):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13, err_msg=f"{columns}: {name}")


def test_kept_columns_only_when_unchunked(float64):
    rng = np.random.default_rng(6)
    layer = Conv2d(2, 3, 3, 1, rng, stride=2)
    x = randn(rng, 3, 2, 8, 8)
    layer.forward(x)
    assert layer.used.col is not None
    layer.max_kept_bytes = 0
    layer.forward(x)
    assert layer.used.col is None


@pytest.mark.parametrize("stride", [0, -1, 1.5, "2"])
def test_bad_stride(stride):
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        Conv2d(2, 3, 3, 1, stride=stride)


def test_winograd_is_stride_1_only():
    with pytest.raises(ValueError, match="stride 1 only"):
        Conv2d(2, 3, 3, 1, algorithm="winograd", stride=2)


def test_auto_uses_im2col_for_stride_2():
    """Where "auto" would take Winograd at stride 1 (numpy, float32, 3x3), it takes im2col at stride 2."""
    x = np.zeros((2, 2, 8, 8), np.float32)
    stride_1 = Conv2d(2, 3, 3, 1, algorithm="auto")
    assert stride_1.algorithm_for(x) is stride_1._winograd
    layer = Conv2d(2, 3, 3, 1, algorithm="auto", stride=2)
    y = layer.forward(x)
    assert y.shape == (2, 3, 4, 4)
    assert layer.used is layer._im2col


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("algorithm", ["auto", "im2col"])
@pytest.mark.parametrize("H", [8, 20])          # short rows (two-pass im2col) and long ones
def test_stride_1_is_unchanged(precision, algorithm, H):
    """stride=1 said explicitly is the layer without the argument, to the bit."""
    with backend.precision(precision):
        rng = np.random.default_rng(7)
        x, dy = randn(rng, 2, 3, H, H), randn(rng, 2, 4, H, H)
        plain = Conv2d(3, 4, 3, 1, np.random.default_rng(8), algorithm)
        explicit = Conv2d(3, 4, 3, 1, np.random.default_rng(8), algorithm, stride=1)
        assert explicit.S == 1 and plain.S == 1
        for a, b in zip(_pass(plain, x, dy), _pass(explicit, x, dy)):
            np.testing.assert_array_equal(a, b)
