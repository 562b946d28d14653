"""The layers of the paper's U-Net (GroupNorm, SiLU, self-attention, upsampling, the skips'
concatenation): finite-difference checks of the input and every parameter, plain-loop and
edge-case checks, and, where PyTorch is installed, its forward and gradients as an oracle."""

import math

import numpy as np
import pytest

from numpy_ddpm import backend
from numpy_ddpm.nn import gradcheck
from numpy_ddpm.nn.activations import SiLU, sigmoid
from numpy_ddpm.nn.attention import SelfAttention
from numpy_ddpm.nn.norm import GroupNorm
from numpy_ddpm.nn.resample import Concat, Upsample

import strict_backend
from conftest import to_np

BOUND = 1e-6            # finite differences, float64
TORCH_BOUND = 1e-10     # PyTorch parity, float64: max |ours - torch| / max |torch| per array


def randn(rng, *shape):
    return backend.asarray(rng.standard_normal(shape), dtype=backend.dtype)


def randomise(layer, rng):
    """Random values in every parameter: zero-initialised ones (attention's proj, beta) would
    pass no gradient upstream and hide a wrong backward behind them."""
    for _, param, _ in layer.parameters():
        param[...] = backend.asarray(rng.standard_normal(param.shape), dtype=param.dtype)
    return layer


def assert_all_checked(errors, layer):
    names = {"x"} | {name for name, _, _ in layer.parameters()}
    assert set(errors) == names
    assert max(errors.values()) < BOUND, errors


# Finite differences --------------------------------------------------------------------------

GROUPNORM_CASES = [
    # (groups, x shape)
    (3, (2, 6, 3, 4)),
    (1, (2, 4, 3, 3)),          # one group: LayerNorm over (C, H, W)
    (4, (3, 4, 2, 3)),          # one channel per group: InstanceNorm
    (2, (5, 6)),                # vectors (N, C)
]


@pytest.mark.parametrize("groups,shape", GROUPNORM_CASES)
def test_groupnorm_gradients(float64, groups, shape):
    rng = np.random.default_rng(0)
    layer = randomise(GroupNorm(groups, shape[1]), rng)
    assert_all_checked(gradcheck.check(layer, randn(rng, *shape), rng=rng), layer)


def test_silu_gradients(float64):
    rng = np.random.default_rng(1)
    layer = SiLU()
    x = backend.asarray(rng.uniform(-6, 6, (4, 3, 2, 5)), dtype=backend.dtype)
    assert_all_checked(gradcheck.check(layer, x, rng=rng), layer)


@pytest.mark.parametrize("channels,groups,shape", [(4, 2, (2, 4, 3, 3)), (6, 3, (2, 6, 2, 3)), (2, 1, (1, 2, 1, 1))])
def test_attention_gradients(float64, channels, groups, shape):
    """k's bias has a zero gradient (the softmax cancels it): no relative error can be taken
    between two roundings of zero, so both must be zero to their rounding instead."""
    rng = np.random.default_rng(2)
    layer = randomise(SelfAttention(channels, groups, rng), rng)
    pairs = gradcheck.gradients(layer, randn(rng, *shape), rng=rng)
    analytic, numeric = pairs.pop("k.bias")
    # the central difference of a constant is rounding / h: about 1e-16 |L| / 1e-5
    assert np.abs(to_np(analytic)).max() < 1e-12 and np.abs(to_np(numeric)).max() < 1e-8
    errors = {name: gradcheck.rel_error(a, n) for name, (a, n) in pairs.items()}
    errors["k.bias"] = 0.0          # checked above
    assert_all_checked(errors, layer)


def test_upsample_gradients(float64):
    rng = np.random.default_rng(3)
    layer = Upsample()
    assert_all_checked(gradcheck.check(layer, randn(rng, 2, 3, 3, 4), rng=rng), layer)


@pytest.mark.parametrize("shape_a,shape_b", [((2, 3, 4, 5), (2, 2, 4, 5)), ((3, 1), (3, 4))])
def test_concat_gradients(float64, shape_a, shape_b):
    """backward returns a pair, so the check is by hand: L = sum(y * dy), central differences
    of L in each entry of a and of b."""
    rng = np.random.default_rng(4)
    layer = Concat()
    a, b = randn(rng, *shape_a), randn(rng, *shape_b)
    y = layer.forward(a, b)
    assert y.shape == (shape_a[0], shape_a[1] + shape_b[1]) + shape_a[2:]
    dy = randn(rng, *y.shape)
    da, db = layer.backward(dy)
    for array, analytic in ((a, da), (b, db)):
        numeric = gradcheck.numerical_gradient(lambda: layer.forward(a, b), array, gradcheck.projection(dy))
        assert analytic.shape == array.shape
        assert gradcheck.rel_error(analytic, numeric) < BOUND


# Definitions and edge cases -----------------------------------------------------------------

def naive_group_norm(x, groups, gamma, beta, eps):
    """The definition, one (sample, group) at a time, by sums."""
    N, C = x.shape[:2]
    per = C // groups
    y = np.empty_like(x)
    for n in range(N):
        for g in range(groups):
            block = x[n, g * per:(g + 1) * per]
            mean = block.sum() / block.size
            var = ((block - mean) ** 2).sum() / block.size
            y[n, g * per:(g + 1) * per] = (block - mean) / np.sqrt(var + eps)
    for c in range(C):
        y[:, c] = y[:, c] * gamma[c] + beta[c]
    return y


@pytest.mark.parametrize("groups,shape", GROUPNORM_CASES)
def test_groupnorm_against_loops(xp_backend, float64, groups, shape):
    rng = np.random.default_rng(5)
    layer = randomise(GroupNorm(groups, shape[1], eps=1e-3), rng)
    x = rng.standard_normal(shape) * 3 + 2
    y = to_np(layer.forward(backend.asarray(x)))
    expected = naive_group_norm(x, groups, to_np(layer.gamma), to_np(layer.beta), 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_groupnorm_far_from_zero_in_float32(xp_backend):
    """x = 1e4 + N(0, 1): the two-pass variance keeps float32 within 1e-3 of float64 on the
    same input (the one-pass E[x^2] - E[x]^2 would err by about 1e8 * 6e-8 = 6 in the variance)."""
    rng = np.random.default_rng(6)
    x32 = (rng.standard_normal((2, 8, 4, 4)) + 1e4).astype(np.float32)
    gamma, beta = rng.standard_normal(8), rng.standard_normal(8)
    outputs = []
    for dtype in ("float32", "float64"):
        with backend.precision(dtype):
            layer = GroupNorm(4, 8)
            layer.gamma[...], layer.beta[...] = backend.asarray(gamma), backend.asarray(beta)
            outputs.append(to_np(layer.forward(backend.asarray(x32, dtype=backend.dtype))))
    y32, y64 = outputs
    assert y32.dtype == np.float32
    assert np.abs(y32 - y64).max() < 1e-3 * np.abs(y64).max()


def test_groupnorm_keeps_the_batch_last_memory_order(float64):
    """On the (N, C, H, W) views of (C, H, W, N) storage that Winograd hands on, GroupNorm's
    forward and backward give what they give on C-ordered copies, and hand on the same memory
    order (no layer may assume C-contiguous input: module.py)."""
    rng = np.random.default_rng(8)
    layer, plain = randomise(GroupNorm(4, 8), rng), GroupNorm(4, 8)
    plain.gamma[...], plain.beta[...] = layer.gamma, layer.beta
    batch_last = lambda a: backend.xp.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)  # noqa: E731
    x, dy = randn(rng, 3, 8, 5, 5), randn(rng, 3, 8, 5, 5)
    y, y_plain = layer.forward(batch_last(x)), plain.forward(x)
    dx, dx_plain = layer.backward(batch_last(dy)), plain.backward(dy)
    for ours, reference in ((y, y_plain), (dx, dx_plain), (layer.dgamma, plain.dgamma), (layer.dbeta, plain.dbeta)):
        np.testing.assert_allclose(to_np(ours), to_np(reference), rtol=1e-12, atol=1e-12)
    for ours in (y, dx):
        assert ours.transpose(1, 2, 3, 0).flags.c_contiguous, ours.strides


@pytest.mark.parametrize("layout", ["plain", "batch last"])
def test_sampling_computes_in_place_what_training_computes(layout):
    """GroupNorm and SiLU work in place while sampling (nothing is kept): the same numbers as in
    training, bit for bit, the input untouched, the memory order handed on."""
    rng = np.random.default_rng(9)
    x = randn(rng, 3, 8, 5, 5)
    if layout == "batch last":
        x = backend.xp.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    for layer in (randomise(GroupNorm(4, 8), rng), SiLU()):
        before = to_np(x).copy()
        trained = to_np(layer.forward(x))
        layer.train(False)
        sampled = layer.forward(x)
        np.testing.assert_array_equal(to_np(sampled), trained)
        np.testing.assert_array_equal(to_np(x), before)
        assert (sampled.transpose(1, 2, 3, 0).flags.c_contiguous) == (layout == "batch last")


def test_groupnorm_groups_must_divide_channels():
    with pytest.raises(ValueError, match="3 groups do not divide its 8 channels"):
        GroupNorm(3, 8)


def test_groupnorm_gradients_accumulate(float64):
    rng = np.random.default_rng(7)
    layer = GroupNorm(2, 4)
    x, dy = randn(rng, 3, 4, 2, 2), randn(rng, 3, 4, 2, 2)
    layer.forward(x)
    layer.backward(dy)
    once = to_np(layer.dgamma).copy(), to_np(layer.dbeta).copy()
    layer.backward(dy)
    np.testing.assert_allclose(to_np(layer.dgamma), 2 * once[0])
    np.testing.assert_allclose(to_np(layer.dbeta), 2 * once[1])


def test_silu_at_extremes_in_float32(xp_backend):
    x = backend.asarray([-1000.0, -100.0, -1.0, 0.0, 1.0, 100.0, 1000.0], dtype=np.float32)
    layer = SiLU()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = to_np(layer.forward(x))
        dx = to_np(layer.backward(backend.xp.ones_like(x)))
    assert y.dtype == np.float32 and np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert y[-1] == 1000.0 and y[0] == 0.0 and y[3] == 0.0
    assert dx[-1] == 1.0 and dx[0] == 0.0 and dx[3] == 0.5
    moderate = np.linspace(-30, 30, 61)
    with backend.precision("float64"):
        np.testing.assert_allclose(to_np(sigmoid(backend.asarray(moderate))), 1 / (1 + np.exp(-moderate)),
                                   rtol=1e-15)


def test_upsample_backward_sums_each_window(xp_backend, float64):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 3, 4))
    layer = Upsample()
    y = to_np(layer.forward(backend.asarray(x)))
    assert y.shape == (2, 3, 6, 8)
    np.testing.assert_array_equal(y[:, :, 1::2, ::2], x)
    dy = rng.standard_normal(y.shape)
    dx = to_np(layer.backward(backend.asarray(dy)))
    windows = np.zeros_like(x)
    for i in range(3):
        for j in range(4):
            windows[:, :, i, j] = dy[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].sum(axis=(2, 3))
    np.testing.assert_allclose(dx, windows, rtol=1e-14, atol=1e-14)


def test_attention_starts_as_the_identity_and_samples_without_a_cache():
    rng = np.random.default_rng(9)
    layer = SelfAttention(8, 4, rng)
    assert not np.any(to_np(layer.proj.w)) and not np.any(to_np(layer.proj.b))
    names = [name for name, _, _ in layer.parameters()]
    assert names == ["norm.weight", "norm.bias", "q.weight", "q.bias", "k.weight", "k.bias",
                     "v.weight", "v.bias", "proj.weight", "proj.bias"]
    x = randn(rng, 2, 8, 4, 4)
    np.testing.assert_array_equal(to_np(layer.forward(x)), to_np(x))
    randomise(layer, rng)
    y_train = to_np(layer.forward(x))
    layer.train(False)
    y_eval = to_np(layer.forward(x))
    assert layer.cache is None and y_eval.dtype == np.float32
    np.testing.assert_array_equal(y_eval, y_train)


def test_the_layers_stay_on_the_device():
    """Forward and backward on an array type as strict as cupy (no host numpy, no syncs)."""
    restore = strict_backend.activate(backend)
    strict_backend.StrictArray.syncs = 0
    try:
        rng = np.random.default_rng(10)
        x = randn(rng, 2, 4, 3, 3)
        for layer in (GroupNorm(2, 4), SiLU(), SelfAttention(4, 2, rng), Upsample()):
            y = layer.forward(x)
            assert isinstance(layer.backward(y), strict_backend.StrictArray)
        concat = Concat()
        da, db = concat.backward(concat.forward(x, x))
        assert isinstance(da, strict_backend.StrictArray) and isinstance(db, strict_backend.StrictArray)
        assert strict_backend.StrictArray.syncs == 0
    finally:
        restore()


# PyTorch as an oracle ----------------------------------------------------------------------

def rel(ours, theirs):
    """max |ours - theirs| / max |theirs|: the error relative to the array's scale."""
    theirs = theirs.detach().numpy()
    return float(np.abs(to_np(ours) - theirs).max() / np.abs(theirs).max())


def against_torch(torch, layer, x, dy, torch_forward, torch_params):
    """{"y", "x", each parameter: relative error} of our forward and gradients against
    `torch_forward(x_t)`, whose leaf tensors `torch_params` are named as our parameters."""
    layer.zero_grad()
    y = layer.forward(backend.asarray(x))
    dx = layer.backward(backend.asarray(dy))
    x_t = torch.tensor(x, requires_grad=True)
    y_t = torch_forward(x_t)
    y_t.backward(torch.tensor(dy))
    errors = {"y": rel(y, y_t), "x": rel(dx, x_t.grad)}
    errors.update({name: rel(grad, torch_params[name].grad) for name, _, grad in layer.parameters()})
    assert set(errors) == {"y", "x"} | set(torch_params)
    return errors


def leaf(torch, array):
    return torch.tensor(to_np(array), requires_grad=True)


def torch_groupnorm_errors(torch, groups, shape, seed=11):
    rng = np.random.default_rng(seed)
    layer = randomise(GroupNorm(groups, shape[1]), rng)
    module = torch.nn.GroupNorm(groups, shape[1], eps=layer.eps).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor(to_np(layer.gamma)))
        module.bias.copy_(torch.tensor(to_np(layer.beta)))
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    return against_torch(torch, layer, x, dy, module, {"weight": module.weight, "bias": module.bias})


def torch_silu_errors(torch, seed=12):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-8, 8, (3, 4, 5, 5))
    return against_torch(torch, SiLU(), x, rng.standard_normal(x.shape), torch.nn.functional.silu, {})


def torch_attention_errors(torch, channels, groups, shape, seed=13):
    """The same block written with torch operations, from the same weights."""
    rng = np.random.default_rng(seed)
    layer = randomise(SelfAttention(channels, groups, rng), rng)
    p = {name: leaf(torch, param) for name, param, _ in layer.parameters()}

    def attention(x):
        N, C, H, W = x.shape
        h = torch.nn.functional.group_norm(x, groups, p["norm.weight"], p["norm.bias"], layer.norm.eps)
        rows = h.permute(0, 2, 3, 1).reshape(N, H * W, C)
        q, k, v = (rows @ p[f"{n}.weight"].T + p[f"{n}.bias"] for n in "qkv")
        w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), dim=-1)
        out = (w @ v) @ p["proj.weight"].T + p["proj.bias"]
        return x + out.reshape(N, H, W, C).permute(0, 3, 1, 2)

    x = rng.standard_normal(shape)
    errors = against_torch(torch, layer, x, rng.standard_normal(shape), attention, p)
    # k's bias: zero gradient (see SelfAttention), so compare sizes, not ratios
    errors["k.bias"] = max(np.abs(to_np(layer.k.db)).max(), float(p["k.bias"].grad.abs().max()))
    return errors


def torch_upsample_errors(torch, seed=14):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4, 5))
    return against_torch(torch, Upsample(), x, rng.standard_normal((2, 3, 8, 10)),
                         lambda x: torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"), {})


@pytest.mark.parametrize("groups,shape", GROUPNORM_CASES + [(8, (2, 32, 8, 8))])
def test_groupnorm_matches_torch(float64, groups, shape):
    torch = pytest.importorskip("torch")
    errors = torch_groupnorm_errors(torch, groups, shape)
    assert max(errors.values()) < TORCH_BOUND, errors


def test_silu_matches_torch(float64):
    torch = pytest.importorskip("torch")
    errors = torch_silu_errors(torch)
    assert max(errors.values()) < TORCH_BOUND, errors


@pytest.mark.parametrize("channels,groups,shape", [(4, 2, (2, 4, 3, 3)), (32, 8, (2, 32, 8, 8))])
def test_attention_matches_torch(float64, channels, groups, shape):
    torch = pytest.importorskip("torch")
    errors = torch_attention_errors(torch, channels, groups, shape)
    assert max(errors.values()) < TORCH_BOUND, errors


def test_upsample_matches_torch(float64):
    torch = pytest.importorskip("torch")
    errors = torch_upsample_errors(torch)
    assert max(errors.values()) < TORCH_BOUND, errors
