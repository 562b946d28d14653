"""The variational bound the lecture derives and the simplified loss never computes, evaluated
(Ho et al. 2020, eq. 5):

    E[-log p_theta(x_0)] <= E_q[ L_T + sum_{t=2}^T L_{t-1} + L_0 ]   with
    L_T     = KL(q(x_T | x_0) || N(0, I))
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),   x_t ~ q(x_t | x_0)
    L_0     = -log p_theta(x_0 | x_1),                               x_1 ~ q(x_1 | x_0)

p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) with
mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t) and
sigma_t^2 = beta_t (Algorithm 2) or beta_tilde_t. Every term is in nats, summed over the D
dimensions of an example, and reported per dimension; x_t is drawn once per example and term.

Indices: array index k is the paper's t = k + 1 (schedule.py), so the KL of the paper's t is
at index t - 1 and is L_{t-1}: `bound_terms(...)[k]` is L_k for k = 0..T (L_0 the decoder at
index 0, L_1..L_{T-1} the KLs at indices 1..T-1, L_T the prior).

The model runs in its working float32; the terms and their sums are float64. The bound is in
the space x_0 is given in (the standardised space of the demos): for a continuous decoder the
caller adds log(std) per dimension to get nats in the data's own scale; a discretised decoder
gives the probability of the pixel values, the same in any scale.
"""

import math

from .. import backend
from ..nn import evaluating
from .sampling import reverse_mean
from .training import q_sample

VARIANCES = ("beta", "beta_tilde")


def _sum_dims(a):
    """(N, ...) -> (N,): the sum over each example's dimensions."""
    return a.reshape(a.shape[0], -1).sum(axis=1)


def _at(coefficient, t, like):
    """coefficient[t] for an index t (int) or t (N,), shaped (N or 1, 1, ...) to broadcast
    against `like`."""
    return coefficient[t].reshape((-1,) + (1,) * (like.ndim - 1))


def gaussian_kl(mean1, var1, mean2, var2):
    """KL(N(mean1, var1) || N(mean2, var2)) per entry (arrays broadcast):
    0.5 (log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1)."""
    xp = backend.xp
    return 0.5 * (xp.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def gaussian_nll(x, mean, var):
    """-log N(x; mean, var) per entry: 0.5 (log(2 pi var) + (x - mean)^2 / var)."""
    xp = backend.xp
    return 0.5 * (xp.log(2 * math.pi * var) + (x - mean) ** 2 / var)


class Coefficients:
    """The schedule's arrays in float64 on the backend, and the reverse variance sigma_t^2."""

    def __init__(self, schedule, variance="beta"):
        if variance not in VARIANCES:
            raise ValueError(f"unknown reverse variance {variance!r}; choose one of: {', '.join(VARIANCES)}")
        xp = backend.xp
        for name in ("beta", "alpha", "alpha_bar", "beta_tilde", "mu_tilde_coef_x0", "mu_tilde_coef_xt"):
            setattr(self, name, xp.asarray(schedule.host[name], dtype=xp.float64))
        # beta_tilde_1 = 0: at t = 1 the decoder takes beta_tilde_2, as Ho et al.'s code clips it
        clipped = xp.concatenate((self.beta_tilde[1:2], self.beta_tilde[1:]))
        self.sigma2 = self.beta if variance == "beta" else clipped


def mu_theta(model, xt, t, c, schedule, labels=None):
    """The model's reverse mean mu_theta(x_t, t) (sampling.reverse_mean), float64 (N, ...), for an
    index t (int, all examples) or t (N,); the network sees float32."""
    xp = backend.xp
    condition = () if labels is None else (labels,)
    eps_hat = model.forward(xt.astype(backend.dtype), schedule.network_time(t), *condition)
    return reverse_mean(xt, eps_hat.astype(xp.float64), _at(c.alpha, t, xt), _at(c.alpha_bar, t, xt))


# The terms, per example (N,) -------------------------------------------------------------

def L_T(x0, c):
    """KL(q(x_T | x_0) || N(0, I)), q(x_T | x_0) = N(sqrt(alpha_bar_T) x_0, (1 - alpha_bar_T) I)."""
    alpha_bar_T = c.alpha_bar[-1]
    return _sum_dims(gaussian_kl(backend.xp.sqrt(alpha_bar_T) * x0, 1 - alpha_bar_T, 0.0, 1.0))


def L_t_minus_1(x0, xt, mean, t, c):
    """KL(q(x_{t-1} | x_t, x_0) || N(mean, sigma_t^2 I)) for an index t >= 1 (int or (N,)), the posterior
    being N(mu_tilde_t(x_t, x_0), beta_tilde_t I) and mean the model's mu_theta(x_t, t)."""
    mu_tilde = _at(c.mu_tilde_coef_x0, t, x0) * x0 + _at(c.mu_tilde_coef_xt, t, x0) * xt
    return _sum_dims(gaussian_kl(mu_tilde, _at(c.beta_tilde, t, x0), mean, _at(c.sigma2, t, x0)))


def L_0(x0, mean, c, decoder=None):
    """-log p_theta(x_0 | x_1) with p_theta(x_0 | x_1) = N(mean, sigma_1^2 I), mean = mu_theta(x_1, 1):
    a density for continuous data (decoder None), or the probability of the pixel values under
    a DiscretisedDecoder (eq. 13)."""
    var = c.sigma2[0]
    if decoder is None:
        return _sum_dims(gaussian_nll(x0, mean, var))
    return _sum_dims(decoder.nll(x0, mean, var))


# The discretised decoder (eq. 13) -----------------------------------------------------------

def erfc(z):
    """The complementary error function, elementwise, to a relative error below 1.2e-7 for all z
    (Numerical Recipes' Chebyshev fit, erfcc): numpy has no erf and the backend must not need scipy."""
    xp = backend.xp
    a = xp.abs(z)
    k = 1 / (1 + 0.5 * a)
    poly = -1.26551223 + k * (1.00002368 + k * (0.37409196 + k * (0.09678418 + k * (-0.18628806 + k * (
        0.27886807 + k * (-1.13520398 + k * (1.48851587 + k * (-0.82215223 + k * 0.17087277))))))))
    y = k * xp.exp(-a * a + poly)
    return xp.where(z >= 0, y, 2 - y)


def normal_mass(lower, upper):
    """P(lower < Z < upper) for Z ~ N(0, 1), from the tail that keeps both ends small (no
    cancellation of two numbers close to 1)."""
    xp = backend.xp

    def tail(z):            # P(Z > z)
        return 0.5 * erfc(z / math.sqrt(2))
    return xp.where(lower >= 0, tail(lower) - tail(upper),
                    xp.where(upper <= 0, tail(-upper) - tail(-lower), 1 - tail(-lower) - tail(upper)))


class DiscretisedDecoder:
    """Ho et al.'s eq. 13 for images whose pixels take the values k / K, k = 0..K (K + 1 levels;
    digits: K = 16, 8-bit images: K = 255), standardised as x_0 = (x - mean) / std.

    Pixel value k / K owns the bin [(k - 1/2) / K, (k + 1/2) / K] of the data scale, the first
    reaching down to -inf and the last up to +inf; in the standardised space its edges are
    ((k -+ 1/2) / K - mean) / std. p(x_0 | x_1) is the Gaussian's mass over the bin, so the
    bound is on -log P(pixel values), a probability that needs no change of variables.
    """

    def __init__(self, nb_levels, mean, std):
        self.K, self.mean, self.std = nb_levels - 1, mean, std

    def nll(self, x0, mean, var):
        """-log of the mass of N(mean, var) over x0's bin, per entry."""
        xp = backend.xp
        k = xp.rint((x0 * self.std + self.mean) * self.K)                           # the pixel level
        edge = lambda j: ((j / self.K) - self.mean) / self.std                      # noqa: E731
        lower = xp.where(k <= 0, -xp.inf, edge(k - 0.5))
        upper = xp.where(k >= self.K, xp.inf, edge(k + 0.5))
        sigma = math.sqrt(float(var))
        mass = normal_mass((lower - mean) / sigma, (upper - mean) / sigma)
        return -xp.log(xp.maximum(mass, 1e-300))


# The bound ----------------------------------------------------------------------------------

def kl_term(model, x0, t, rng, schedule, c, labels=None):
    """L_t, the KL at index t >= 1 (int, or (N,) per example) of each example, with a fresh
    x_t ~ q(x_t | x_0)."""
    eps = rng.standard_normal(x0.shape, dtype=backend.xp.float64)
    xt = q_sample(x0, t, eps, c)             # in float64: c holds the schedule's float64 arrays
    return L_t_minus_1(x0, xt, mu_theta(model, xt, t, c, schedule, labels), t, c)


def decoder_term(model, x0, rng, schedule, c, decoder=None, labels=None):
    """L_0 of each example, with a fresh x_1 ~ q(x_1 | x_0)."""
    eps = rng.standard_normal(x0.shape, dtype=backend.xp.float64)
    x1 = q_sample(x0, 0, eps, c)
    return L_0(x0, mu_theta(model, x1, 0, c, schedule, labels), c, decoder)


def all_terms(model, x0, schedule, rng, variance="beta", decoder=None, labels=None):
    """(T + 1, N) float64: L_0, L_1, ..., L_{T-1}, L_T of each example in nats (summed over
    its dimensions); T forward passes."""
    xp = backend.xp
    c = Coefficients(schedule, variance)
    x0 = xp.asarray(x0, dtype=xp.float64)
    kls = [kl_term(model, x0, t, rng, schedule, c, labels) for t in range(1, schedule.T)]
    return xp.stack([decoder_term(model, x0, rng, schedule, c, decoder, labels)] + kls + [L_T(x0, c)])


def sampled_bound(model, x0, schedule, rng, nb_timesteps, variance="beta", decoder=None, labels=None):
    """(N,) unbiased estimates of each example's bound: L_T + L_0 + (T - 1) mean_k L_{t_k}
    over nb_timesteps indices t_k drawn uniformly from 1..T-1 per example (the paper's
    t = 2..T). L_0 is computed, not sampled: in the standardised space it is a density term of
    a few nats below zero among KLs near zero, and drawing it with probability 1/T would add
    most of the variance. nb_timesteps + 1 forward passes."""
    xp = backend.xp
    c = Coefficients(schedule, variance)
    x0 = xp.asarray(x0, dtype=xp.float64)
    total = xp.zeros(x0.shape[0])
    for _ in range(nb_timesteps):
        t = rng.integers(1, schedule.T, size=x0.shape[0])
        total += kl_term(model, x0, t, rng, schedule, c, labels)
    L_0_value = decoder_term(model, x0, rng, schedule, c, decoder, labels)
    return L_T(x0, c) + L_0_value + (schedule.T - 1) * total / nb_timesteps


def _per_example(model, x0, schedule, rng, nb_timesteps, variance, decoder, labels, batch_size):
    """Each example's bound (N,) in nats, a batch of examples at a time, the model in
    evaluation mode (no activations kept for a backward)."""
    xp = backend.xp
    if nb_timesteps is not None and nb_timesteps < 1:
        raise ValueError(f"the number of time steps must be at least 1, not {nb_timesteps}")
    parts = []
    with evaluating(model):
        for start in range(0, x0.shape[0], batch_size):
            batch = x0[start:start + batch_size]
            y = None if labels is None else labels[start:start + batch_size]
            if nb_timesteps is None:
                parts.append(all_terms(model, batch, schedule, rng, variance, decoder, y).sum(axis=0))
            else:
                parts.append(sampled_bound(model, batch, schedule, rng, nb_timesteps, variance, decoder, y))
    return xp.concatenate(parts)


def nll_bound(model, x0, schedule, rng, nb_timesteps=None, variance="beta", decoder=None, labels=None,
              batch_size=1000):
    """(nats per dimension, standard error) of the bound on E[-log p_theta(x_0)] over the batch
    x0 (N, ...), in the space x0 is given in.

    nb_timesteps None: all T terms for every example; else an unbiased Monte Carlo estimate
    over that many t per example (sampled_bound: L_0 and L_T computed, the KLs sampled). The
    standard error is that of the mean over the examples (data, x_t and, when sampled, t all
    vary). variance: "beta" or "beta_tilde" (sigma_t^2). decoder: None (a Gaussian density)
    or a DiscretisedDecoder; labels (N,): a conditional model's classes.
    """
    bound = _per_example(model, x0, schedule, rng, nb_timesteps, variance, decoder, labels, batch_size)
    D = math.prod(x0.shape[1:])
    N = bound.shape[0]
    spread = float(bound.std(ddof=1)) if N > 1 else float("nan")
    return float(bound.mean()) / D, spread / math.sqrt(N) / D


def bound_terms(model, x0, schedule, rng, variance="beta", decoder=None, labels=None):
    """The (T + 1,) host array of the mean terms, per dimension in nats: L_0 first, then
    L_1..L_{T-1}, L_T last; their sum is nll_bound's value with all T terms."""
    D = math.prod(x0.shape[1:])
    with evaluating(model):
        terms = all_terms(model, x0, schedule, rng, variance, decoder, labels)
    return backend.to_numpy(terms.mean(axis=1)) / D


def bits_per_dim(model, x0, schedule, rng, nb_levels, mean, std, nb_timesteps=None, variance="beta",
                 labels=None, batch_size=500):
    """(bits per dimension, standard error) of images x0 (N, C, H, W), standardised from pixels
    k / (nb_levels - 1), with the discretised decoder: the nats of nll_bound over log 2."""
    decoder = DiscretisedDecoder(nb_levels, mean, std)
    nats, stderr = nll_bound(model, x0, schedule, rng, nb_timesteps, variance, decoder, labels, batch_size)
    return nats / math.log(2), stderr / math.log(2)
