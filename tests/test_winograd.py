"""Winograd's convolution (winograd.py): its transforms are exact, it agrees with the im2col
reference, its hand-written backward passes pass the finite-difference checks, it runs on the
strict (cupy-like) array, and a small conv net trains the same with either algorithm."""

import random
import sys
from fractions import Fraction

import numpy as np
import pytest

from numpy_ddpm import backend, gradcheck, winograd
from numpy_ddpm.diffusion import train_step
from numpy_ddpm.layers import Conv2d
from numpy_ddpm.models import convnet
from numpy_ddpm.optim import Adam
from numpy_ddpm.schedule import Schedule

import strict_backend
from conftest import to_np

# Float32 tolerance, from the transforms' conditioning: for F(4x4, 5x5) the entries of A^T reach
# 8 (= 2^3, the point 2 cubed), those of G 21/4 after the scaling that makes B^T's at most 1, so
# a transformed tile sums terms some 8^2 * 5^2 ~ 10^3 times the size of the output they cancel
# down to; float32 rounding (6e-8) then leaves about 1e-5 of the largest output (measured:
# 2e-6 to 1e-5; im2col 1e-7). 2e-4 leaves a margin of 10 and still fails on any wrong index
# (an error of order 1).
RTOL32 = 2e-4

SHAPES = [
    # (N, C, O, H, W, K, P): both kernel sizes, paddings from 0 to K - 1, outputs that are not
    # a multiple of the tile, the lecture's layers at 8x8 and 28x28
    (2, 3, 4, 5, 6, 3, 1),
    (3, 4, 2, 6, 6, 3, 0),
    (1, 2, 3, 9, 7, 3, 2),
    (1, 2, 3, 7, 5, 5, 2),
    (2, 2, 5, 4, 7, 5, 1),
    (2, 3, 2, 11, 9, 5, 4),
    (2, 3, 4, 6, 10, 5, 0),
    (5, 64, 64, 8, 8, 5, 2),
    (2, 2, 64, 28, 28, 5, 2),
]


@pytest.mark.parametrize("r", sorted(winograd.POINTS))
def test_transforms_are_exact(r):
    """A^T [(G g) * (B^T d)] is the correlation sum_k g_k d_(i+k), exactly, in rationals;
    B^T's rows have a largest entry of 1."""
    A_T, G, B_T = winograd.transform_matrices(winograd.M_TILE, r, winograd.POINTS[r])
    m, alpha = winograd.M_TILE, winograd.M_TILE + r - 1
    assert (len(A_T), len(A_T[0]), len(G), len(G[0]), len(B_T)) == (m, alpha, alpha, r, alpha)
    assert all(max(abs(v) for v in row) == 1 for row in B_T)
    rng = random.Random(r)
    for _ in range(5):
        g = [Fraction(rng.randint(-9, 9), rng.randint(1, 5)) for _ in range(r)]
        d = [Fraction(rng.randint(-9, 9), rng.randint(1, 5)) for _ in range(alpha)]
        Gg = [sum(G[j][k] * g[k] for k in range(r)) for j in range(alpha)]
        Bd = [sum(B_T[j][k] * d[k] for k in range(alpha)) for j in range(alpha)]
        y = [sum(A_T[i][j] * Gg[j] * Bd[j] for j in range(alpha)) for i in range(m)]
        assert y == [sum(g[k] * d[i + k] for k in range(r)) for i in range(m)]


def pair(C, O, K, P, seed=0):
    return (Conv2d(C, O, K, P, np.random.default_rng(seed), algorithm="im2col"),
            Conv2d(C, O, K, P, np.random.default_rng(seed), algorithm="winograd"))


def relative(a, b):
    """max |a - b| / max |b|: the error relative to the array's scale."""
    return np.abs(to_np(a) - to_np(b)).max() / np.abs(to_np(b)).max()


@pytest.mark.parametrize("N,C,O,H,W,K,P", SHAPES)
def test_agrees_with_im2col_in_float32(N, C, O, H, W, K, P):
    rng = np.random.default_rng(1)
    reference, fast = pair(C, O, K, P)
    x = backend.asarray(rng.standard_normal((N, C, H, W)), dtype=np.float32)
    y = reference.forward(x)
    assert fast.algorithm_for(x) is fast._winograd
    assert relative(fast.forward(x), y) < RTOL32
    dy = backend.asarray(rng.standard_normal(y.shape), dtype=np.float32)
    assert relative(fast.backward(dy), reference.backward(dy)) < RTOL32
    assert relative(fast.dw, reference.dw) < RTOL32
    np.testing.assert_allclose(to_np(fast.db), to_np(reference.db), rtol=1e-5)


@pytest.mark.parametrize("N,C,O,H,W,K,P", SHAPES[:7])
def test_agrees_with_im2col_in_float64(float64, N, C, O, H, W, K, P):
    """In float64 both are exact to rounding: any disagreement is a wrong index or transform."""
    rng = np.random.default_rng(2)
    reference, fast = pair(C, O, K, P)
    x = backend.asarray(rng.standard_normal((N, C, H, W)))
    y = reference.forward(x)
    np.testing.assert_allclose(to_np(fast.forward(x)), to_np(y), rtol=1e-10, atol=1e-12)
    dy = backend.asarray(rng.standard_normal(y.shape))
    np.testing.assert_allclose(to_np(fast.backward(dy)), to_np(reference.backward(dy)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_np(fast.dw), to_np(reference.dw), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("slices", [1, 2, 5])
def test_sampling_works_through_the_batch_in_slices(float64, monkeypatch, slices):
    """In evaluation mode the batch goes through in slices whose tiles fit max_tile_bytes
    (5 images as 5 slices of 1, 3 + 2, or whole), each written into its rows of the output:
    the same outputs as im2col's, and in the batch-last memory order Winograd hands on."""
    rng = np.random.default_rng(3)
    N, C, O, H, W, K, P = 5, 3, 4, 9, 7, 3, 1
    reference, fast = pair(C, O, K, P)
    reference.train(False)
    fast.train(False)
    per_image = 6 ** 2 * max(C, O) * 3 * 2 * 8                  # alpha^2 max(C, O) TH TW bytes, float64
    monkeypatch.setattr(winograd.WinogradConvolution, "max_tile_bytes", per_image * -(-N // slices))
    x = backend.asarray(rng.standard_normal((N, C, H, W)))
    y = fast.forward(x)
    np.testing.assert_allclose(to_np(y), to_np(reference.forward(x)), rtol=1e-10, atol=1e-12)
    assert y.strides[0] == y.itemsize                            # the batch innermost, as unsliced
    assert fast.x is None and fast.used.V is None                # nothing kept for a backward pass


@pytest.mark.parametrize("slices", [1, 2, 5])
def test_training_without_kept_tiles_works_through_the_batch_in_slices(float64, monkeypatch, slices):
    """A layer that keeps x and rebuilds V takes the batch in slices in training too, forward and
    backward (the weight gradient summed over the slices): the outputs and gradients of im2col."""
    rng = np.random.default_rng(4)
    N, C, O, H, W, K, P = 5, 3, 4, 9, 7, 3, 1
    reference, fast = pair(C, O, K, P)
    fast._winograd.max_kept_bytes = 0
    per_image = 6 ** 2 * max(C, O) * 3 * 2 * 8                  # alpha^2 max(C, O) TH TW bytes, float64
    monkeypatch.setattr(winograd.WinogradConvolution, "max_tile_bytes", per_image * -(-N // slices))
    calls, engine = [], sys.modules[winograd.WinogradConvolution.__module__]     # numpy_ddpm.nn.winograd
    monkeypatch.setattr(engine, "input_transform", counted(engine.input_transform, calls))
    x, dy = backend.asarray(rng.standard_normal((N, C, H, W))), backend.asarray(rng.standard_normal((N, O, H, W)))
    np.testing.assert_allclose(to_np(fast.forward(x)), to_np(reference.forward(x)), rtol=1e-10, atol=1e-12)
    assert fast.x is x and fast.used.V is None
    np.testing.assert_allclose(to_np(fast.backward(dy)), to_np(reference.backward(dy)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_np(fast.dw), to_np(reference.dw), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(to_np(fast.db), to_np(reference.db), rtol=1e-12)
    assert sorted(calls) == sorted(slice_sizes(N, slices) * 3)      # forward, V rebuilt, dx


def counted(fn, calls):
    def wrapper(x, *args, **kwargs):
        calls.append(x.shape[0])
        return fn(x, *args, **kwargs)
    return wrapper


def slice_sizes(N, slices):
    n = -(-N // slices)
    return [min(n, N - n0) for n0 in range(0, N, n)]


@pytest.mark.parametrize("N,C,O,H,W,K,P", SHAPES[:7])
@pytest.mark.parametrize("kept", [True, False])
def test_winograd_gradients(float64, N, C, O, H, W, K, P, kept):
    """Finite differences, random upstream gradient, the input and both parameters; with the
    transformed tiles kept for backward and rebuilt there."""
    rng = np.random.default_rng(3)
    layer = Conv2d(C, O, K, P, rng, algorithm="winograd")
    layer._winograd.max_kept_bytes = 2**30 if kept else 0
    errors = gradcheck.check(layer, backend.asarray(rng.standard_normal((N, C, H, W))), rng=rng)
    assert set(errors) == {"x", "weight", "bias"}
    assert max(errors.values()) < 1e-6, errors
    layer.forward(backend.asarray(rng.standard_normal((N, C, H, W))))
    assert (layer.x is None) == kept and (layer.used.V is None) != kept     # x or its tiles, never both


def test_small_convnet_gradients(float64):
    """The conv net of test_layers.py with every convolution by Winograd (3x3: F(4x4, 3x3))."""
    rng = np.random.default_rng(8)
    model = convnet(2, width=4, kernel_size=3, seed=1)
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            layer.algorithm = "winograd"
    x = gradcheck.away_from_kinks(model, (2, 2, 5, 4), 0.2, rng=rng)
    pairs = gradcheck.gradients(model, x, 0.2, rng=rng, max_entries=60)
    assert len(pairs) == 1 + 2 * 7
    # Errors relative to each array's scale: a weight on a dead path has a gradient of exactly
    # 0 by im2col but of rounding size (1e-11) by Winograd, whose entry-wise relative error
    # says nothing about the backward pass.
    errors = {name: float(np.abs(to_np(a) - to_np(n)).max() / np.abs(to_np(n)).max()) for name, (a, n) in pairs.items()}
    assert max(errors.values()) < 1e-7, errors


def test_auto_chooses_winograd_only_where_it_should(float64):
    layer = Conv2d(2, 3, 5, 2, algorithm="auto")
    assert layer.algorithm_for(np.zeros((1, 2, 4, 4), np.float32)) is layer._winograd
    assert layer.algorithm_for(np.zeros((1, 2, 4, 4))) is layer._im2col        # float64: the reference
    assert Conv2d(2, 3, 1).algorithm_for(np.zeros((1, 2, 4, 4), np.float32)) is not None
    with pytest.raises(ValueError, match="kernel sizes"):
        Conv2d(2, 3, 7, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm"):
        Conv2d(2, 3, 5, algorithm="fft")


def test_runs_on_the_strict_array():
    """Only matrix products and copies: the same code runs on an array as strict as cupy's."""
    rng = np.random.default_rng(5)
    x_host = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)
    reference = Conv2d(2, 3, 5, 2, np.random.default_rng(0), algorithm="im2col")
    y_ref = reference.forward(x_host)
    dx_ref = reference.backward(np.ones_like(y_ref))
    restore = strict_backend.activate(backend)
    try:
        strict_backend.StrictArray.syncs = 0
        layer = Conv2d(2, 3, 5, 2, np.random.default_rng(0), algorithm="winograd")
        x = backend.asarray(x_host)
        y = layer.forward(x)
        dx = layer.backward(backend.xp.ones_like(y))
        assert isinstance(y, strict_backend.StrictArray) and isinstance(dx, strict_backend.StrictArray)
        assert strict_backend.StrictArray.syncs == 0
    finally:
        restore()
    assert relative(y.get(), y_ref) < RTOL32 and relative(dx.get(), dx_ref) < RTOL32


def test_training_gives_the_same_loss_curve():
    """A small conv net trained 50 steps from the same start with the same draws: the losses
    of the two algorithms stay within the loss's noise of each other (they differ by float32
    rounding only, which training amplifies slowly)."""
    losses = {}
    for algorithm in ("im2col", "winograd"):
        model = convnet(1, width=8, kernel_size=5, seed=0)
        for layer in model.layers:
            if isinstance(layer, Conv2d):
                layer.algorithm = algorithm
        optimizer = Adam(model.flat_parameters(), lr=5e-3)
        x0 = backend.asarray(np.random.default_rng(0).standard_normal((8, 1, 8, 8)), dtype=np.float32)
        rng, schedule = backend.default_rng(0), Schedule()
        losses[algorithm] = np.array([float(train_step(model, optimizer, x0, schedule, rng)) for _ in range(50)])
    a, b = losses["im2col"], losses["winograd"]
    assert a[-10:].mean() < 0.95 * a[:5].mean()                    # it learns
    np.testing.assert_allclose(b[:10], a[:10], rtol=1e-4)         # the same steps, to rounding
    # later the rounding differences grow (Adam, lr 5e-3) but stay well inside the noise of
    # the one-batch loss (its step-to-step standard deviation, about 0.05): means over 10 steps
    noise = np.diff(a).std() / np.sqrt(2)
    assert np.abs(b.reshape(5, 10).mean(1) - a.reshape(5, 10).mean(1)).max() < noise / 3
