"""Sampling: the reverse process that every sampler shares, Algorithm 2 of Ho et al. (2020)
plugged into it, and classifier-free guidance (Ho & Salimans 2022) of the model's eps.

A sampler is a list of (t, t_prev) step indices and a `step(x_t, eps_hat, t, t_prev)` that
returns x_t_prev; `reverse_process` runs the model and the loop (DDIM in ddim.py and
DPM-Solver++ in dpm_solver.py plug in the same way). Samples are in the standardised space of
the data; step indices are 0-based (schedule.py), t_prev = -1 being the end of sampling.
"""

import math

from .. import backend
from ..nn import evaluating


def reverse_process(model, shape, schedule, rng, steps, step, progress=None, callback=None, labels=None,
                    guidance=1.0, chunk=None):
    """Draw x_T ~ N(0, I) of `shape`, then for each (t, t_prev) of `steps` compute the model's
    eps at x_t (guided_eps) and x_t_prev = step(x_t, eps_hat, t, t_prev); return the last x.

    `progress` wraps the list of steps (e.g. a tqdm bar). `callback(t, x)` is called with x_T
    (t = T) and then after each step with x_t_prev, numbered t_prev + 1 (the paper's numbering:
    T - 1, ..., 0 for Algorithm 2). `labels` (N,) and `guidance` s: classifier-free guidance of
    a conditional model (guided_eps). The model is in evaluation mode throughout. The model
    sees at most `chunk` rows of x at a time (chunk_rows: None chooses by the size of a row).
    """
    chunk = chunk or chunk_rows(shape)
    with evaluating(model):                 # sampling needs no backward: keep nothing for it
        # 1: x_T ~ N(0, I)
        x = rng.standard_normal(shape, dtype=backend.dtype)
        if callback is not None:
            callback(schedule.T, x)
        # 2: for t = T, ..., 1 (or the sampler's subset of the steps)
        for t, t_prev in (progress(steps) if progress else steps):
            eps_hat = guided_eps(model, x, schedule.network_time(t), labels, guidance, chunk)
            # 3, 4: the sampler's step to x_{t_prev}
            x = step(x, eps_hat, t, t_prev)
            if callback is not None:
                callback(t_prev + 1, x)
    # 6: return x_0
    return x


# Entries of x in one forward pass while sampling: 83 images of 28x28. Smaller passes keep more
# of each layer's activations in the caches: the U-Net's forward took 12.3 ms an image at 83
# images against 17.2 at 334 (2^18 entries), the lecture's conv net 7.2 against 7.4 (AVX2 EPYC).
CHUNK_ENTRIES = 2 ** 16


def chunk_rows(shape):
    """How many rows of x of `shape` the model sees at once while sampling: CHUNK_ENTRIES
    entries' worth. Images are chunked (a 28x28 U-Net at 1000 images would hold gigabytes of
    im2col columns and run out of the caches); 2-D points only past 32,768 of them (the toy
    demos draw 5000: one pass)."""
    return max(1, CHUNK_ENTRIES // math.prod(shape[1:]))


def reverse_mean(xt, eps_hat, alpha, alpha_bar):
    """mu_theta(x_t, t) = (x_t - (1 - alpha_t) / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t), the
    mean of p_theta(x_{t-1} | x_t) (eq. 11), with 1 - alpha_t = beta_t. The coefficients are
    floats (one step for the whole batch) or arrays that broadcast against x_t (the bound's)."""
    return (xt - (1 - alpha) / (1 - alpha_bar) ** 0.5 * eps_hat) / alpha ** 0.5


def sampling_step(xt, eps_hat, z, t, schedule):
    """x_{t-1} = mu_theta(x_t, t) + sigma_t z, for an integer step index t (Python int); z = None
    means no noise (the last step). The coefficients are float64 on the host."""
    alpha, alpha_bar, sigma = (schedule.host[k][t] for k in ("alpha", "alpha_bar", "sigma"))
    x = reverse_mean(xt, eps_hat, alpha, alpha_bar)
    if z is not None:
        x += sigma * z
    return x


def generate(model, shape, schedule, rng, progress=None, callback=None, labels=None, guidance=1.0):
    """Algorithm 2: draw samples of `shape`, in the standardised space of the data. Lines 1, 2,
    5 and 6 (x_T ~ N(0, I), the loop over t, return x_0) are reverse_process's; lines 3 and 4
    are the step. `progress`, `callback`, `labels` and `guidance` as for reverse_process."""
    update = backend.fused("sampling_step", sampling_step)

    def step(x, eps_hat, t, t_prev):
        # 3: z ~ N(0, I) if t > 1, else z = 0       (index t > 0)
        z = rng.standard_normal(shape, dtype=backend.dtype) if t > 0 else None
        # 4: x_{t-1} = (x_t - (1 - alpha_t) / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t) + sigma_t z
        return update(x, eps_hat, z, t, schedule)

    # 2: for t = T, ..., 1      (here t is the array index, the paper's t - 1: T-1, ..., 0)
    steps = [(t, t - 1) for t in range(schedule.T - 1, -1, -1)]
    return reverse_process(model, shape, schedule, rng, steps, step, progress, callback, labels, guidance)


# Classifier-free guidance (Ho & Salimans 2022) -----------------------------------------------

def guided_eps(model, x, t, labels=None, guidance=1.0, chunk=None):
    """eps = eps_theta(x, t, null) + s (eps_theta(x, t, y) - eps_theta(x, t, null)), the
    lecture's convention: s = 1 is the plain conditional model, s = 0 the unconditional one
    (the "no label" class K = model.nb_classes), s > 1 pushes x_t towards its class and away
    from the others. The two eps come from one forward pass on the doubled batch [x; x] with
    labels [y; K]. labels=None: the unconditional model, eps_theta(x, t).

    x: (N, ...)   t: the network time (a float)   labels: (N,) integers in 0..K
    With `chunk`, the model sees at most that many rows of x at a time (the same eps, in bounded memory).
    """
    xp = backend.xp
    if chunk and x.shape[0] > chunk:
        return xp.concatenate([guided_eps(model, x[n0:n0 + chunk], t, None if labels is None else labels[n0:n0 + chunk],
                                          guidance) for n0 in range(0, x.shape[0], chunk)])
    if labels is None:
        return model.forward(x, t)
    labels = backend.asarray(labels)
    null = xp.full_like(labels, model.nb_classes)
    if guidance in (0, 1):          # one of the two halves alone: eps_theta(x, t, null) or eps_theta(x, t, y)
        return model.forward(x, t, null if guidance == 0 else labels)
    N = x.shape[0]
    eps = model.forward(xp.concatenate((x, x)), t, xp.concatenate((labels, null)))    # (2N, ...)
    eps_label, eps_null = eps[:N], eps[N:]
    return eps_null + guidance * (eps_label - eps_null)
