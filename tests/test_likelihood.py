"""The variational bound (likelihood.py) and the exact references it is compared with (exact.py).

Small schedules (T = 100) keep these fast: the properties checked (the bound of an exact model,
the agreement of the sampled and the full sum, training lowering the bound) hold for any T.
"""

import math
import re

import numpy as np
import pytest
from test_diffusion import OptimalDenoiser

from numpy_ddpm import backend, data, likelihood
from numpy_ddpm.diffusion import train_step
from numpy_ddpm.evaluation import exact
from numpy_ddpm.models import mlp
from numpy_ddpm.nn import checkpoint
from numpy_ddpm.optim import Adam
from numpy_ddpm.schedule import Schedule

from conftest import to_np

# Closed forms, to check the integrals of evaluation/exact.py against where they exist
CLOSED_FORMS = {
    "ramp": 0.5 - math.log(2),      # -int_0^1 2u log(2u) du
    "two_discs": math.log(2) + 0.5 * math.log(math.pi * 0.3 ** 2) + 0.5 * math.log(math.pi * 0.5 ** 2),
    "disc_grid": math.log(16 * math.pi * 0.1 ** 2),
    "checkerboard": math.log(8),
}


def test_gaussian_kl_against_numerical_integration():
    m1, v1, m2, v2 = 0.3, 0.5, -0.4, 1.7
    x = np.linspace(-15, 15, 600_001)
    p = np.exp(-0.5 * (x - m1) ** 2 / v1) / math.sqrt(2 * math.pi * v1)
    log_q = -0.5 * (x - m2) ** 2 / v2 - 0.5 * math.log(2 * math.pi * v2)
    integral = np.trapezoid(p * (np.log(p) - log_q), x)
    assert float(likelihood.gaussian_kl(np.float64(m1), v1, m2, v2)) == pytest.approx(integral, rel=1e-8)
    assert float(likelihood.gaussian_nll(np.float64(0.2), m2, v2)) == pytest.approx(
        -(-0.5 * (0.2 - m2) ** 2 / v2 - 0.5 * math.log(2 * math.pi * v2)), rel=1e-12)


def test_erfc_to_its_stated_accuracy():
    z = np.linspace(-6, 9, 3001)
    expected = np.array([math.erfc(v) for v in z])
    assert np.max(np.abs(likelihood.erfc(z) / expected - 1)) < 1.2e-7


@pytest.mark.parametrize("nb_levels,sigma", [(17, 0.3), (17, 0.01), (256, 0.02)])
def test_discretised_decoder_against_numerical_integration(nb_levels, sigma):
    """The mass of N(mu, sigma^2) over each pixel value's bin, in the standardised space, against
    the trapezoid rule on the density; the masses of all values sum to 1."""
    mean, std, mu = 0.3, 0.4, 0.05
    decoder = likelihood.DiscretisedDecoder(nb_levels, mean, std)
    K = nb_levels - 1
    x0 = (np.arange(nb_levels) / K - mean) / std                       # each pixel value, standardised
    mass = np.exp(-to_np(decoder.nll(x0, mu, sigma ** 2)))
    assert mass.sum() == pytest.approx(1, abs=1e-6)
    for k in range(0, nb_levels, max(1, nb_levels // 17)):
        low = (k - 0.5) / K if k > 0 else -np.inf
        high = (k + 0.5) / K if k < K else np.inf
        low, high = max((low - mean) / std, mu - 12 * sigma), min((high - mean) / std, mu + 12 * sigma)
        x = np.linspace(low, high, 20_001)
        density = np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        integral = np.trapezoid(density, x) if high > low else 0.0
        assert mass[k] == pytest.approx(integral, rel=1e-6, abs=1e-12)


def closed_form_terms(x0, schedule, variance):
    """The bound's terms, each example's expectation over x_t in closed form, for N(0, 1) data
    and its exact model eps = sqrt(1 - alpha_bar_t) x_t, whose reverse mean is sqrt(alpha_t) x_t:
    with x_t = a x0 + b eps, mu_tilde - mu_theta = (c0 + k a) x0 + k b eps, k = c_t - sqrt(alpha_t)."""
    h = {name: np.array(v) for name, v in schedule.host.items()}
    sigma2 = h["beta"] if variance == "beta" else np.concatenate((h["beta_tilde"][1:2], h["beta_tilde"][1:]))
    a, b2 = np.sqrt(h["alpha_bar"]), 1 - h["alpha_bar"]
    k = h["mu_tilde_coef_xt"] - np.sqrt(h["alpha"])
    mean2 = ((h["mu_tilde_coef_x0"] + k * a) * x0) ** 2 + k ** 2 * b2
    tilde = h["beta_tilde"][1:]
    kl = 0.5 * (np.log(sigma2[1:] / tilde) + (tilde + mean2[1:]) / sigma2[1:] - 1)       # t = 1..T-1
    beta1, alpha1 = h["beta"][0], h["alpha"][0]
    l0 = 0.5 * math.log(2 * math.pi * sigma2[0]) + ((beta1 * x0) ** 2 + alpha1 * beta1) / (2 * sigma2[0])
    lT = 0.5 * (a[-1] ** 2 * x0 ** 2 + b2[-1] - 1 - math.log(b2[-1]))
    return np.concatenate(([l0], kl, [lT]))


@pytest.mark.parametrize("x0", [-1.3, 0.7])
def test_closed_form_terms_of_the_exact_model_sum_to_the_exact_nll(x0):
    """For N(0, 1) data the reverse chain with sigma_t^2 = beta_t is exact: q(x_{t-1} | x_t) is
    N(sqrt(alpha_t) x_t, beta_t), so p_theta(x_{0:T}) = q(x_{0:T}) and the bound of each x0 is
    -log N(x0; 0, 1), for any T; with beta_tilde it is strictly above."""
    s = Schedule(T=100)
    exact_nll = 0.5 * math.log(2 * math.pi) + 0.5 * x0 ** 2
    assert closed_form_terms(x0, s, "beta").sum() == pytest.approx(exact_nll, abs=1e-10)
    assert closed_form_terms(x0, s, "beta_tilde").sum() > exact_nll + 0.1


@pytest.mark.parametrize("variance", likelihood.VARIANCES)
def test_bound_of_the_exact_model_of_gaussian_data(variance):
    """nll_bound against the closed-form terms at a fixed x0 (so that only x_t varies, and the
    standard error measures it), term by term against bound_terms, and, over x0 ~ N(0, 1),
    against the entropy 0.5 log(2 pi e): equal in expectation with beta (see above)."""
    s = Schedule(T=100)
    oracle = exact.GaussianMixtureDenoiser(s, [1.0], [[0.0]], [1.0])
    x0 = np.full((2000, 1), 0.7)
    bound, stderr = likelihood.nll_bound(oracle, x0, s, backend.default_rng(1), variance=variance,
                                         batch_size=2000)        # one batch: the draws of bound_terms
    expected = closed_form_terms(0.7, s, variance)
    assert abs(bound - expected.sum()) < 4 * stderr
    assert stderr < 0.1             # 4 standard errors: a test to a few tenths of a nat
    terms = likelihood.bound_terms(oracle, x0, s, backend.default_rng(1), variance=variance)
    assert terms.shape == (s.T + 1,)
    assert terms.sum() == pytest.approx(bound, abs=1e-9)        # the same draws: the same sum
    assert terms[-1] == pytest.approx(expected[-1], rel=1e-9)   # L_T is closed form in the code too
    x0 = backend.default_rng(2).standard_normal((2000, 1))
    bound, stderr = likelihood.nll_bound(oracle, x0, s, backend.default_rng(3), variance=variance)
    entropy = 0.5 * math.log(2 * math.pi * math.e)
    if variance == "beta":
        assert abs(bound - entropy) < 4 * stderr
    else:
        assert bound > entropy + 0.5


def test_mixture_oracle_matches_the_diffusion_tests_oracle():
    s = Schedule()
    weights, means, stds = [0.3, 0.7], [-1.0, 1.0], [0.2, 0.3]
    ours = exact.GaussianMixtureDenoiser(s, weights, [[m] for m in means], stds)
    theirs = OptimalDenoiser(s, weights, means, stds)
    x = np.linspace(-3, 3, 61)[:, None]
    for t in (0, 10, 500, 999):
        np.testing.assert_allclose(to_np(ours.forward(x, s.network_time(t))),
                                   to_np(theirs.forward(x, s.network_time(t))), rtol=1e-5, atol=1e-6)
    # all T terms give the network one time per pass, a float, as Algorithm 2 does: a model
    # that only takes a float (theirs) has the same bound
    s = Schedule(T=50)
    x0 = np.linspace(-1.5, 1.5, 100)[:, None]
    ours = exact.GaussianMixtureDenoiser(s, weights, [[m] for m in means], stds)
    theirs = OptimalDenoiser(s, weights, means, stds)
    assert likelihood.nll_bound(theirs, x0, s, backend.default_rng(4)) == \
        pytest.approx(likelihood.nll_bound(ours, x0, s, backend.default_rng(4)), rel=1e-5)


def gaussian_mixture_data(n, seed):
    x = data.toy("gaussian_mixture", n, seed=seed)
    standardised, _, _ = data.standardise(x)
    return standardised.astype(np.float64)


def test_monte_carlo_estimate_agrees_with_the_full_sum():
    """A model at initialisation (large, uneven terms): the unbiased estimate over 20 sampled t
    per example against all T terms, within 4 standard errors of their difference."""
    s = Schedule(T=100)
    model = mlp(1, hidden=16, seed=1)
    x0 = gaussian_mixture_data(400, seed=5)
    full, se_full = likelihood.nll_bound(model, x0, s, backend.default_rng(1))
    sampled, se_sampled = likelihood.nll_bound(model, x0, s, backend.default_rng(2), nb_timesteps=20)
    assert abs(full - sampled) < 4 * math.hypot(se_full, se_sampled)
    assert se_sampled < 0.2 * abs(full)


def test_training_lowers_the_bound():
    s = Schedule(T=100)
    model = mlp(1, hidden=32, seed=0)
    x_train = backend.asarray(gaussian_mixture_data(2000, seed=0), dtype=backend.dtype)
    x_test = gaussian_mixture_data(500, seed=9)
    before, se_before = likelihood.nll_bound(model, x_test, s, backend.default_rng(1))
    optimizer, rng = Adam(model.flat_parameters(), lr=1e-3), backend.default_rng(0)
    for step in range(400):
        train_step(model, optimizer, x_train[(step % 40) * 50:(step % 40 + 1) * 50], s, rng)
    after, se_after = likelihood.nll_bound(model, x_test, s, backend.default_rng(1))
    assert after < before - 4 * math.hypot(se_before, se_after)


def test_bits_per_dim_of_a_small_conv_net():
    """The discretised decoder gives probabilities: every term is >= 0, so is the bound, and
    an untrained net is far worse than the uniform code, log2(17) = 4.09 bits."""
    from numpy_ddpm.models import convnet
    images = data.digits(20)
    x0, mean, std = data.standardise(images)
    model = convnet(1, width=4, kernel_size=3)
    bits, stderr = likelihood.bits_per_dim(model, x0, Schedule(T=20), backend.default_rng(0), 17, mean, std)
    assert math.log2(17) < bits < 1e4 and stderr > 0


# Exact references -------------------------------------------------------------------------

def test_entropy_integrals_against_closed_forms():
    sigma = 0.7
    gaussian = exact.gaussian_mixture_density([1.0], [[0.3]], [sigma])
    h, error = exact.integrate_1d(lambda x: exact._neg_p_log_p(gaussian, x[:, None]), -10, 10, [0.3])
    assert h == pytest.approx(0.5 * math.log(2 * math.pi * math.e * sigma ** 2), abs=1e-10) and error < 1e-8
    assert exact.entropy("ramp")[0] == pytest.approx(CLOSED_FORMS["ramp"], abs=1e-10)
    # a uniform disc of radius 0.4: H = log(pi r^2); the midpoint rule errs only in the cells
    # its edge cuts, and its error estimate (the n/2 grid) bounds the error
    disc = exact.discs_density([(0.1, 0.0)], [0.4], [1.0])
    h, error = exact.integrate_2d(lambda x: exact._neg_p_log_p(disc, x), -0.6, 0.6, n=512)
    assert abs(h - math.log(math.pi * 0.16)) < max(error, 1e-4) and error < 2e-3
    h, error = exact.integrate_2d(lambda x: exact._neg_p_log_p(exact.checkerboard_density, x), -2, 2, n=256)
    assert h == pytest.approx(CLOSED_FORMS["checkerboard"], abs=1e-12)


@pytest.mark.parametrize("name", list(exact.DENSITIES))
def test_densities_match_the_samplers(name):
    """The density integrates to 1, is positive at every point data.py draws (float64 draws, so
    that no rounding crosses an edge), and E[-log p(X)] over the draws is its entropy."""
    density, (low, high), breakpoints = exact.DENSITIES[name]
    if breakpoints is not None:
        mass, _ = exact.integrate_1d(lambda x: density(x[:, None]), low, high, breakpoints)
        h, h_error = exact.entropy(name)
    else:
        mass = exact.midpoint_2d(density, low, high, 512)
        h, h_error = exact.integrate_2d(lambda x: exact._neg_p_log_p(density, x), low, high, 512)
    assert mass == pytest.approx(1, abs=2e-3)
    x = data.TOY[name](20_000, backend.host_rng(1))
    x = x[0] if isinstance(x, tuple) else x         # (points, labels) for the labelled sets
    p = density(x)
    assert (p > 0).all()
    nll = -np.log(p)
    assert abs(nll.mean() - h) < 4 * nll.std() / math.sqrt(len(nll)) + h_error + 1e-3


# The command ------------------------------------------------------------------------------

def test_parse_model_reads_the_checkpoint_description():
    """The model descriptions of checkpoints written before version 2, read without eval."""
    from numpy_ddpm import models
    assert likelihood.parse_model("mlp(dim=2, hidden=256)") == ("mlp", {"dim": 2, "hidden": 256})
    assert likelihood.parse_model("convnet(channels=1, width=64, kernel_size=5)") == \
        ("convnet", {"channels": 1, "width": 64, "kernel_size": 5})
    for bad in ("mlp", "mlp(dim=2.5)", "__import__('os')", "mlp(dim)", "mlp(dim=2) + 1"):
        with pytest.raises(models.ModelError):
            likelihood.parse_model(bad)


def test_command_evaluates_a_saved_run(tmp_path, capsys):
    model = mlp(1, hidden=8, seed=0)
    params = to_np(model.flat_params)
    path = str(tmp_path / "checkpoint.npz")
    checkpoint.save(path, {"params": params, "ema": params},
                    {"model": "mlp(dim=1, hidden=8)", "data": "gaussian_mixture", "mean": 0.2, "std": 0.5})
    likelihood.main(["--checkpoint", path, "--nb-points", "50", "--out", str(tmp_path)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"NLL bound: (\S+) ± (\S+) nats/dim \(exact: (\S+), gap: (\S+)\)", line)
    assert match, line
    bound, _, exact_nll, gap = map(float, match.groups())
    assert exact_nll == pytest.approx(exact.entropy_per_dim("gaussian_mixture"), abs=1e-4)
    assert gap == pytest.approx(bound - exact_nll, abs=2e-4) and gap > 0
    assert (tmp_path / "bound.png").exists()
    checkpoint.save(path, {"params": params, "ema": params},
                    {"model": "mlp(dim=1, hidden=9)", "mean": 0, "std": 1})
    with pytest.raises(checkpoint.CheckpointError, match="parameter count"):
        likelihood.main(["--checkpoint", path])


def test_command_on_a_conditional_checkpoint(tmp_path, capsys):
    """A class-conditional run is evaluated unconditionally, with the "no label" class K; while
    the models take no labels, the command says so in one sentence."""
    path = str(tmp_path / "checkpoint.npz")
    meta = {"model": "mlp(dim=1, hidden=8, nb_classes=2)", "data": "gaussian_mixture",
            "mean": 0.2, "std": 0.5}
    try:
        model = mlp(1, hidden=8, seed=0, nb_classes=2)
    except TypeError:
        checkpoint.save(path, {"params": np.zeros(3), "ema": np.zeros(3)}, meta)
        with pytest.raises(likelihood.UserError, match="conditional models is not supported yet"):
            likelihood.main(["--checkpoint", path])
        return
    params = to_np(model.flat_params)
    checkpoint.save(path, {"params": params, "ema": params}, meta)
    likelihood.main(["--checkpoint", path, "--nb-points", "20", "--nb-timesteps", "3",
                     "--out", str(tmp_path)])
    assert capsys.readouterr().out.startswith("NLL bound: ")
