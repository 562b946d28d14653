"""DDIM (Song, Meng & Ermon 2021): the step indices, eq. 12 against a float64 evaluation, the
deterministic sampler, its equivalence with Algorithm 2 at eta = 1, and the analytic oracle of
test_diffusion.py (exact E[eps | x_t] of a 1-D Gaussian mixture) driven through 50 steps."""

import copy
import math

import numpy as np
import pytest
from test_diffusion import OptimalDenoiser

from numpy_ddpm import backend, diffusion
from numpy_ddpm.diffusion import ddim_generate, ddim_step, ddim_timesteps, generate
from numpy_ddpm.schedule import Schedule

from conftest import to_np


def test_ddim_timesteps():
    np.testing.assert_array_equal(to_np(ddim_timesteps(1000, 10, "leading")), np.arange(900, -1, -100))
    np.testing.assert_array_equal(to_np(ddim_timesteps(1000, 10, "trailing")), np.arange(999, 0, -100))
    np.testing.assert_array_equal(to_np(ddim_timesteps(1000, 1000, "leading")), np.arange(999, -1, -1))
    np.testing.assert_array_equal(to_np(ddim_timesteps(1000, 1000, "trailing")), np.arange(999, -1, -1))
    for S in (1, 3, 7, 50, 61, 103, 999):        # 61, 103: float arange gives S + 1 entries there
        for spacing in ("leading", "trailing"):
            taus = to_np(ddim_timesteps(1000, S, spacing))
            assert len(taus) == S and taus.dtype.kind == "i"
            assert np.all(np.diff(taus) < 0) and taus[-1] >= 0 and taus[0] <= 999
        trailing = np.round(np.arange(1000, 0, -1000 / S)).astype(int) - 1       # diffusers' formula
        np.testing.assert_array_equal(to_np(ddim_timesteps(1000, S, "trailing")), trailing[:S])
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(1000, 10, "linspace")
    for S in (0, 1001):
        with pytest.raises(ValueError, match="1 to T = 1000 steps"):
            ddim_timesteps(1000, S)


@pytest.mark.parametrize("t,t_prev,eta", [(999, 979, 0.0), (999, 979, 1.0), (500, 250, 0.5),
                                          (40, 0, 1.0), (19, -1, 0.0), (19, -1, 1.0), (1, 0, 0.3)])
def test_ddim_step_is_eq_12(t, t_prev, eta):
    """Against eq. 12 evaluated in float64 from beta alone (not from the Schedule's arrays)."""
    s = Schedule()
    rng = np.random.default_rng(t)
    xt, eps_hat, z = (rng.standard_normal((5, 3)) for _ in range(3))
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    a_t, a_prev = alpha_bar[t], (alpha_bar[t_prev] if t_prev >= 0 else 1.0)
    x0_hat = (xt - np.sqrt(1 - a_t) * eps_hat) / np.sqrt(a_t)
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
    expected = np.sqrt(a_prev) * x0_hat + np.sqrt(1 - a_prev - sigma ** 2) * eps_hat + sigma * z
    np.testing.assert_allclose(to_np(ddim_step(xt, eps_hat, z, t, t_prev, s, eta)), expected, rtol=1e-10, atol=1e-12)
    if eta == 0:
        np.testing.assert_array_equal(to_np(ddim_step(xt, eps_hat, None, t, t_prev, s, eta)),
                                      to_np(ddim_step(xt, eps_hat, z, t, t_prev, s, eta)))
    # an exact eps_hat (x_t built from x0 and eps_hat) gives x_prev on the line from x0 to eps_hat
    x0 = rng.standard_normal((5, 3))
    xt = np.sqrt(a_t) * x0 + np.sqrt(1 - a_t) * eps_hat
    np.testing.assert_allclose(to_np(ddim_step(xt, eps_hat, None, t, t_prev, s, 0.0)),
                               np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps_hat, atol=1e-9)


class SameStart:
    """A generator whose first draw (x_T) is fixed and whose later draws (the z) come from `seed`."""

    def __init__(self, x_T, seed):
        self.x_T, self.rng = x_T, np.random.default_rng(seed)

    def standard_normal(self, size, dtype=None):
        if self.x_T is not None:
            x, self.x_T = self.x_T, None
            return x
        return self.rng.standard_normal(size).astype(dtype)


def test_eta_zero_is_deterministic_given_x_T():
    s = Schedule()
    oracle = OptimalDenoiser(s, [0.5, 0.5], [-1.0, 1.0], [0.3, 0.3])
    x_T = np.random.default_rng(0).standard_normal((200, 1)).astype(np.float32)
    runs = {eta: [to_np(ddim_generate(oracle, x_T.shape, s, SameStart(x_T.copy(), seed), nb_steps=20, eta=eta))
                  for seed in (1, 2)] for eta in (0.0, 1.0)}
    np.testing.assert_array_equal(*runs[0.0])
    assert np.abs(runs[1.0][0] - runs[1.0][1]).max() > 0.01        # eta = 1 does use the later draws


def test_all_steps_at_eta_one_is_algorithm_2_with_beta_tilde():
    """DDIM with all T steps ("leading", nb_steps = T) and eta = 1 has sigma_t^2 = beta_tilde_t
    and the posterior mean mu_tilde(x_t, x0_hat): it is Algorithm 2 with sigma_t = sqrt(beta_tilde_t).
    Both draw x_T and then z at each step but the last, so from the same seed the paths agree
    up to float32 rounding, and so do the moments, which match the mixture's."""
    s = Schedule()
    posterior = copy.deepcopy(s)
    posterior.host["sigma"] = list(np.sqrt(s.host["beta_tilde"]))
    weights, means, stds = [0.3, 0.7], [-1.0, 1.0], [0.2, 0.3]
    n = 2000
    ddim = to_np(ddim_generate(OptimalDenoiser(s, weights, means, stds), (n, 1), s, backend.default_rng(5),
                               nb_steps=s.T, eta=1.0, spacing="leading"))[:, 0]
    ddpm = to_np(generate(OptimalDenoiser(s, weights, means, stds), (n, 1), posterior, backend.default_rng(5)))[:, 0]
    np.testing.assert_allclose(ddim, ddpm, atol=2e-3)
    p, mu, sd = map(np.array, (weights, means, stds))
    mean, var = (p * mu).sum(), (p * (sd ** 2 + mu ** 2)).sum() - (p * mu).sum() ** 2
    for x in (ddim, ddpm):
        assert abs(x.mean() - mean) < 6 * math.sqrt(var / n) + 0.01
        assert abs(x.var() / var - 1) < 6 * math.sqrt(2 / n) + 0.01
    # and it is not the lecture's sigma_t = sqrt(beta_t): those paths differ
    lecture = to_np(generate(OptimalDenoiser(s, weights, means, stds), (n, 1), s, backend.default_rng(5)))[:, 0]
    assert np.abs(lecture - ddim).max() > 0.05


WEIGHTS, MEANS, STDS = [0.3, 0.7], [-1.0, 1.0], [0.2, 0.3]


def oracle_mixture(eta, seed=3, n=20_000):
    """50 DDIM steps on the oracle: (weight of the left component, mean of each, std of each)."""
    s = Schedule()
    x = to_np(ddim_generate(OptimalDenoiser(s, WEIGHTS, MEANS, STDS), (n, 1), s, backend.default_rng(seed),
                            nb_steps=50, eta=eta))[:, 0]
    left, right = x[x < 0], x[x > 0]
    return len(left) / n, (left.mean(), right.mean()), (left.std(), right.std())


# Tolerances at 50 steps, n = 20,000. Weights: 6 standard errors (0.019) plus 0.005, as at
# eta = 1 few stochastic steps leave slightly too little mass in the small component (measured
# 0.288 to 0.294 for 0.3; 0.298 at eta = 0). Means: 0.03, for the discretisation of the large
# first steps, which pulls both means inwards by 1.5 to 2% (measured -0.982 and 0.986 at both
# eta; the sampling error of a mean is 0.003). A wrong step is far outside (tested below).
WEIGHT_TOLERANCE, MEAN_TOLERANCE = 6 * math.sqrt(0.3 * 0.7 / 20_000) + 0.005, 0.03


def assert_reproduces_the_mixture(eta):
    weight, means, stds = oracle_mixture(eta)
    assert abs(weight - WEIGHTS[0]) < WEIGHT_TOLERANCE, weight
    for got, expected in zip(means, MEANS):
        assert abs(got - expected) < MEAN_TOLERANCE, means
    if eta == 0:        # the deterministic sampler keeps the spreads too (within 6%; eta = 1 narrows them ~12%)
        for got, expected in zip(stds, STDS):
            assert abs(got / expected - 1) < 0.06, stds


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_50_ddim_steps_on_the_oracle_reproduce_the_mixture(eta):
    assert_reproduces_the_mixture(eta)


def _direction_without_sigma(xt, eps_hat, z, t, t_prev, schedule, eta):
    alpha_bar, alpha_bar_prev, sigma = diffusion.ddim_sigma(t, t_prev, schedule, eta)
    x = alpha_bar_prev ** 0.5 * (xt - (1 - alpha_bar) ** 0.5 * eps_hat) / alpha_bar ** 0.5
    x = x + (1 - alpha_bar_prev) ** 0.5 * eps_hat
    return x if z is None else x + sigma * z


def _previous_index_of_ddpm(xt, eps_hat, z, t, t_prev, schedule, eta):
    return diffusion.ddim_step(xt, eps_hat, z, t, t - 1 if t_prev >= 0 else -1, schedule, eta)


@pytest.mark.parametrize("faulty", [_direction_without_sigma, _previous_index_of_ddpm])
def test_the_oracle_catches_a_faulty_ddim_step(monkeypatch, faulty):
    monkeypatch.setitem(backend._fused_kernels, "ddim_step", faulty)
    with pytest.raises(AssertionError):
        assert_reproduces_the_mixture(1.0)


def test_ddim_stays_on_the_device():
    """On the strict stand-in for cupy: no host numpy, and one read of the step indices."""
    from numpy_ddpm.models import mlp

    import strict_backend
    restore = strict_backend.activate(backend)
    try:
        model = mlp(2, hidden=8, nb_classes=3)
        strict_backend.StrictArray.syncs = 0
        labels = backend.asarray(np.array([0, 1, 2, 3, 0]))
        out = ddim_generate(model, (5, 2), Schedule(T=40), backend.default_rng(1), nb_steps=8, eta=1.0,
                            labels=labels, guidance=3.0)
        assert isinstance(out, strict_backend.StrictArray) and strict_backend.StrictArray.syncs == 1
    finally:
        restore()
