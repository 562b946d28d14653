"""The schedule's identities, Algorithm 2 against an analytic oracle, Algorithm 1's gradient."""

import math

import numpy as np
import pytest

from numpy_ddpm import backend, diffusion, gradcheck
from numpy_ddpm.diffusion import generate, loss_and_backward, q_sample
from numpy_ddpm.models import mlp
from numpy_ddpm.schedule import Schedule

from conftest import to_np


def test_schedule_identities():
    s = Schedule()
    beta = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.host["beta"], beta)
    np.testing.assert_allclose(s.host["alpha_bar"], np.cumprod(1 - beta), rtol=1e-12)
    np.testing.assert_allclose(s.host["sigma"], np.sqrt(beta))
    assert s.alpha_bar.dtype == np.float32
    assert s.host["alpha_bar"][-1] < 1e-4          # x_T is nearly pure noise
    # the posterior of x_{t-1} given x_t, x_0 (Gaussian algebra), at some t
    t = 500
    ab_prev, b = s.host["alpha_bar"][t - 1], beta[t]
    precision = (1 - b) / b + 1 / (1 - ab_prev)
    np.testing.assert_allclose(s.host["beta_tilde"][t], 1 / precision, rtol=1e-10)
    # its mean: precision-weighted x_t (through q(x_t | x_{t-1})) and x_0 (through q(x_{t-1} | x_0))
    xt, x0 = 0.7, -1.3
    mean = (np.sqrt(1 - b) / b * xt + np.sqrt(ab_prev) / (1 - ab_prev) * x0) / precision
    with backend.precision("float64"):
        np.testing.assert_allclose(float(Schedule().mu_tilde(xt, x0, t)), mean, rtol=1e-10)


def test_q_sample_matches_iterated_one_step_process():
    """x_t from q(x_t | x_0) against x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps iterated."""
    with backend.precision("float64"):
        s = Schedule()
    rng = np.random.default_rng(0)
    n, x0 = 100_000, 1.5
    for t in (0, 99, 499, 999):
        x = np.full(n, x0)
        for k in range(t + 1):
            x = np.sqrt(1 - s.host["beta"][k]) * x + np.sqrt(s.host["beta"][k]) * rng.standard_normal(n)
        direct = to_np(q_sample(np.full((n, 1), x0), np.full(n, t), rng.standard_normal((n, 1)), s))
        ab = s.host["alpha_bar"][t]
        tol = 5 / math.sqrt(n)
        assert abs(x.mean() - math.sqrt(ab) * x0) < tol and abs(direct.mean() - math.sqrt(ab) * x0) < tol
        assert abs(x.var() - (1 - ab)) < tol and abs(direct.var() - (1 - ab)) < tol
    # x_T is close to N(0, I) whatever x0
    assert abs(direct.mean()) < 0.02 and abs(direct.std() - 1) < 0.02


class OptimalDenoiser:
    """The exact E[eps | x_t] for 1-D data drawn from a mixture of Gaussians (weights p_k, means
    mu_k, stds s_k): x_t = a x0 + b eps with a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t),
    so given component k, eps | x_t is Gaussian with mean b (x_t - a mu_k) / (a^2 s_k^2 + b^2),
    and the components are weighted by their posterior responsibilities."""

    def __init__(self, schedule, weights, means, stds):
        self.s, self.p, self.mu, self.sd = schedule, np.array(weights), np.array(means), np.array(stds)

    def forward(self, x, network_time):
        t = int(round((network_time + 0.5) * (self.s.T - 1)))
        ab = self.s.host["alpha_bar"][t]
        a, b = math.sqrt(ab), math.sqrt(1 - ab)
        x = to_np(x).astype(np.float64)                              # (N, 1)
        var = a * a * self.sd ** 2 + b * b                           # (K,)
        log_r = np.log(self.p) - 0.5 * (x - a * self.mu) ** 2 / var - 0.5 * np.log(var)
        r = np.exp(log_r - log_r.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        eps = (r * b * (x - a * self.mu) / var).sum(axis=1, keepdims=True)
        return backend.asarray(eps, dtype=backend.dtype)


@pytest.mark.parametrize("weights,means,stds", [
    ([1.0], [0.0], [1.0]),                       # standardised Gaussian: the reverse chain is exact
    ([1.0], [0.7], [0.3]),
    ([0.3, 0.7], [-1.0, 1.0], [0.2, 0.3]),       # a two-component mixture
])
def test_generate_with_the_optimal_denoiser_reproduces_the_data(weights, means, stds):
    s = Schedule()
    n = 20_000
    x = to_np(generate(OptimalDenoiser(s, weights, means, stds), (n, 1), s, backend.default_rng(3)))[:, 0]
    p, mu, sd = map(np.array, (weights, means, stds))
    mean = (p * mu).sum()
    var = (p * (sd ** 2 + mu ** 2)).sum() - mean ** 2
    # 6 standard errors of the sample mean and variance, plus 1% for the discretisation of
    # the reverse chain
    assert abs(x.mean() - mean) < 6 * math.sqrt(var / n) + 0.01
    assert abs(x.var() / var - 1) < 6 * math.sqrt(2 / n) + 0.01
    if len(weights) == 2:
        left = (x < 0).mean()
        assert abs(left - weights[0]) < 6 * math.sqrt(weights[0] * weights[1] / n)


def narrow_component_stds(seed=3):
    """Generate from the oracle of two narrow Gaussians (std 0.02 at -1 and +1) and return the
    spread of each generated cluster relative to 0.02."""
    s = Schedule()
    oracle = OptimalDenoiser(s, [0.5, 0.5], [-1.0, 1.0], [0.02, 0.02])
    x = to_np(generate(oracle, (20_000, 1), s, backend.default_rng(seed)))[:, 0]
    return x[x < 0].std() / 0.02, x[x > 0].std() / 0.02


NARROW_TOLERANCE = 0.06     # measured: the exact sampler gives 0.96 (discretisation); 0.7% noise


def test_generate_keeps_narrow_components_narrow():
    for ratio in narrow_component_stds():
        assert abs(ratio - 1) < NARROW_TOLERANCE


def _noise_at_last_step(xt, eps_hat, z, t, schedule):
    x = diffusion.sampling_step(xt, eps_hat, z, t, schedule)
    if z is None:
        x = x + schedule.host["sigma"][t] * backend.default_rng(9).standard_normal(x.shape, dtype=x.dtype)
    return x


def _off_by_one(xt, eps_hat, z, t, schedule):
    return diffusion.sampling_step(xt, eps_hat, z, max(t - 1, 0), schedule)


@pytest.mark.parametrize("faulty", [_noise_at_last_step, _off_by_one])
def test_the_oracle_catches_a_faulty_sampler(monkeypatch, faulty):
    monkeypatch.setitem(backend._fused_kernels, "sampling_step", faulty)
    assert any(abs(ratio - 1) > NARROW_TOLERANCE for ratio in narrow_component_stds())


def test_training_loss_gradient_by_finite_differences(float64):
    """Algorithm 1's loss, with t and eps fixed, against central differences in float64."""
    rng = np.random.default_rng(5)
    s = Schedule()
    model = mlp(2, hidden=16, seed=4)
    x0 = backend.asarray(rng.standard_normal((6, 2)))
    t = backend.asarray(rng.integers(0, 1000, 6))
    eps = backend.asarray(rng.standard_normal((6, 2)))
    loss_and_backward(model, x0, t, eps, s)
    analytic = model.flat_grads.copy()

    def loss():
        return backend.asarray(loss_and_backward(model, x0, t, eps, s))

    numeric = gradcheck.numerical_gradient(loss, model.flat_params, lambda a, b: a - b)
    assert gradcheck.rel_error(analytic, numeric) < 1e-6
