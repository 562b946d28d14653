import numpy as np
import pytest

from numpy_ddpm import backend
from numpy_ddpm.models import mlp
from numpy_ddpm.optim import EMA, Adam, adam_update, adam_update_in_place, ema_update, ema_update_in_place

from conftest import to_np


def test_adam_three_steps_by_hand(xp_backend):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(5).astype(np.float32)
    grads = [rng.standard_normal(5).astype(np.float32) for _ in range(3)]
    param, grad = backend.asarray(p0.copy()), backend.xp.zeros(5, dtype=np.float32)
    adam = Adam([(param, grad)], lr=0.1, betas=(0.8, 0.9), eps=1e-3)
    p, m, v = p0.astype(np.float64), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads, start=1):
        grad[...] = backend.asarray(g)
        adam.step()
        m = 0.8 * m + 0.2 * g
        v = 0.9 * v + 0.1 * g * g
        p = p - 0.1 * (m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.9 ** t)) + 1e-3)
        np.testing.assert_allclose(to_np(param), p, rtol=1e-5, atol=1e-6)
    assert adam.t == 3
    adam.reset()
    assert adam.t == 0 and not np.any(to_np(adam.m[0]))


def test_adam_finds_a_quadratic_minimum(xp_backend):
    """f(p) = 1/2 (p - c)^T A (p - c), A diagonal: minimum at c."""
    a = np.array([1.0, 4.0, 0.5, 2.0])
    c = np.array([0.3, -1.2, 2.0, 0.0])
    param, grad = backend.asarray(np.zeros(4)), backend.asarray(np.zeros(4))
    adam = Adam([(param, grad)], lr=0.01)
    for _ in range(5000):
        grad[...] = backend.asarray(a) * (param - backend.asarray(c))
        adam.step()
    np.testing.assert_allclose(to_np(param), c, atol=1e-3)


def test_adam_on_flat_buffer_equals_per_array():
    """The model's one flat buffer and its per-layer arrays give the same Adam step."""
    a, b = mlp(2, hidden=8, seed=3), mlp(2, hidden=8, seed=3)
    rng = np.random.default_rng(1)
    g = rng.standard_normal(a.flat_grads.size).astype(np.float32)
    opt_a = Adam(a.flat_parameters())
    opt_b = Adam([(p, gr) for _, p, gr in b.parameters()])
    for _ in range(3):
        a.flat_grads[...] = g
        b.flat_grads[...] = g
        opt_a.step()
        opt_b.step()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


def test_ema_formula(xp_backend):
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(6)
    param = backend.asarray(p0.copy())
    ema = EMA([(param, None)], decay=0.9)
    expected = p0.copy()
    for _ in range(4):
        new = rng.standard_normal(6)
        param[...] = backend.asarray(new)
        ema.update()
        expected = 0.9 * expected + 0.1 * new
        np.testing.assert_allclose(to_np(ema.averages[0]), expected, rtol=1e-12)
    saved = {"averages": [to_np(a).copy() for a in ema.state()["averages"]]}
    ema.copy_to_model()
    np.testing.assert_allclose(to_np(param), expected)
    other = EMA([(backend.xp.zeros_like(param), None)], decay=0.9)
    other.load_state(saved)
    np.testing.assert_array_equal(to_np(other.averages[0]), saved["averages"][0])
    with pytest.raises(ValueError, match="do not match"):
        other.load_state({"averages": [np.zeros(5)]})


def test_adam_state_round_trip():
    """state() and load_state() carry the moments and the step count: two more steps after a
    load give bitwise what two more steps of the original give."""
    rng = np.random.default_rng(3)
    params = [(backend.asarray(rng.standard_normal(7)), backend.asarray(rng.standard_normal(7)))]
    adam = Adam(params, lr=1e-2)
    for _ in range(3):
        adam.step()
    saved = {"t": adam.state()["t"], "m": [to_np(m).copy() for m in adam.state()["m"]],
             "v": [to_np(v).copy() for v in adam.state()["v"]]}
    copy = [(params[0][0].copy(), params[0][1])]
    other = Adam(copy, lr=1e-2)
    other.load_state(saved)
    for _ in range(2):
        adam.step()
        other.step()
    assert other.t == adam.t == 5
    np.testing.assert_array_equal(to_np(copy[0][0]), to_np(params[0][0]))

def test_in_place_versions_equal_the_reference_bitwise(xp_backend):
    rng = np.random.default_rng(3)
    def arrays():
        return [backend.asarray(rng.standard_normal(1000).astype(np.float32)) for _ in range(4)]
    p, g, m, v = arrays()
    v = abs(v)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    scratch = backend.xp.empty_like(p), backend.xp.empty_like(p)
    for t in (1, 2, 30):
        adam_update(p, g, m, v, t, 1e-3, 0.9, 0.999, 1e-8)
        adam_update_in_place(p2, g, m2, v2, t, 1e-3, 0.9, 0.999, 1e-8, *scratch)
        np.testing.assert_array_equal(to_np(p), to_np(p2))
        np.testing.assert_array_equal(to_np(v), to_np(v2))
    average, average2 = p.copy(), p.copy()
    ema_update(average, g, 0.99)
    ema_update_in_place(average2, g, 0.99, scratch[0])
    np.testing.assert_array_equal(to_np(average), to_np(average2))
