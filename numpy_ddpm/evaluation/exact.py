"""What the toy sets with a known density give exactly: their densities, their differential
entropies by numerical integration, and the exact denoiser of Gaussian-mixture data.

The differential entropy H(p) = -integral p log p is the expected negative log-likelihood of
the true density, so no model, however good, reaches an NLL below it: it is the "exact" value
the variational bound (likelihood.py) is compared with.

Integration (host numpy, float64):
- 1-D sets: the tanh-sinh (double exponential) rule between the density's breakpoints, which
  converges fast even where the integrand's derivative is singular (ramp: x log x at x = 1).
  The error estimate is the difference with the rule at twice the step, an overestimate since
  each halving of the step about doubles the number of correct digits: below 1e-10 here.
- 2-D sets: the midpoint rule on an n x n grid over a box holding the support. For the
  piecewise-constant sets only the cells cut by a disc's edge are in error; the estimate is
  the difference with the n/2 grid. At n = 2048 the error against the closed forms is
  3e-5 nats (two_discs) and 2.3e-4 (disc_grid: 16 small discs, more edge per area); the grid
  falls on the checkerboard's edges and the Gaussians are smooth, so those two are exact to
  rounding.
"""

import functools
import math

from .. import backend

# density p(x) of x (N, D) float64, the box (low, high) per axis holding its support (or all
# but a negligible tail), and the breakpoints of 1-D densities


def gaussian_mixture_density(weights, means, stds):
    """p(x) = sum_k w_k N(x; mu_k, s_k^2 I) for x (N, D); means (K, D), stds (K,)."""
    np = backend.np
    weights, means, stds = np.asarray(weights, float), np.asarray(means, float), np.asarray(stds, float)

    def density(x):
        D = x.shape[1]
        d2 = ((x[:, None, :] - means[None]) ** 2).sum(axis=-1)                  # (N, K)
        norm = (2 * math.pi * stds ** 2) ** (-D / 2)
        return (weights * norm * np.exp(-0.5 * d2 / stds ** 2)).sum(axis=1)
    return density


def ramp_density(x):
    """2 (1 - x) on [0, 1]: the minimum of two uniforms."""
    np = backend.np
    x = x[:, 0]
    return np.where((x >= 0) & (x <= 1), 2 * (1 - x), 0.0)


def discs_density(centres, radii, weights):
    """A mixture of uniform discs: w_k / (pi r_k^2) inside disc k (the discs must not overlap)."""
    np = backend.np

    def density(x):
        p = np.zeros(len(x))
        for (cx, cy), r, w in zip(centres, radii, weights):
            inside = (x[:, 0] - cx) ** 2 + (x[:, 1] - cy) ** 2 <= r * r
            p += np.where(inside, w / (math.pi * r * r), 0.0)
        return p
    return density


def checkerboard_density(x):
    """1/8 on the 8 black squares of [-2, 2]^2: floor(x) + floor(y) even."""
    np = backend.np
    inside = (np.abs(x) <= 2).all(axis=1)
    black = (np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0
    return np.where(inside & black, 1 / 8, 0.0)


_GRID = [((q - 1.5) / 1.5, (r - 1.5) / 1.5) for q in range(4) for r in range(4)]

# name -> Gaussian mixture (weights, means (K, D), stds (K,)), as data.py draws it
MIXTURES = {
    "gaussian_mixture": ([0.3, 0.7], [[-0.5], [0.5]], [0.2, 0.2]),
    "eight_gaussians": ([1 / 8] * 8, [[2 * math.cos(k * math.pi / 4), 2 * math.sin(k * math.pi / 4)]
                                      for k in range(8)], [0.25] * 8),
}

# name -> (density, box (low, high) holding the support, 1-D breakpoints)
DENSITIES = {
    "gaussian_mixture": (gaussian_mixture_density(*MIXTURES["gaussian_mixture"]), (-5.0, 5.0), [-0.5, 0.5]),
    "ramp": (ramp_density, (0.0, 1.0), []),
    "two_discs": (discs_density([(-0.5, -0.5), (0.5, 0.5)], [0.3, 0.5], [0.5, 0.5]), (-1.0, 1.0), None),
    "disc_grid": (discs_density(_GRID, [0.1] * 16, [1 / 16] * 16), (-1.2, 1.2), None),
    "checkerboard": (checkerboard_density, (-2.0, 2.0), None),
    "eight_gaussians": (gaussian_mixture_density(*MIXTURES["eight_gaussians"]), (-4.0, 4.0), None),
}


# Integration ------------------------------------------------------------------------------

def _neg_p_log_p(density, x):
    """-p log p at the points x (N, D), 0 where p = 0."""
    np = backend.np
    p = density(x)
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def tanh_sinh(f, a, b, h):
    """integral_a^b f(x) dx by the tanh-sinh rule of step h: x = c + r tanh(pi/2 sinh u),
    u = k h for |u| <= 3.5, weight r h pi/2 cosh u / cosh^2(pi/2 sinh u); f takes an (M,) array."""
    np = backend.np
    u = np.arange(-int(3.5 / h), int(3.5 / h) + 1) * h
    s = math.pi / 2 * np.sinh(u)
    c, r = (a + b) / 2, (b - a) / 2
    w = r * h * math.pi / 2 * np.cosh(u) / np.cosh(s) ** 2
    return float((w * f(c + r * np.tanh(s))).sum())


def integrate_1d(f, low, high, breakpoints=(), level=8):
    """(integral of f over [low, high], error estimate): tanh-sinh between the breakpoints at
    step 2^-level, the estimate being the difference with step 2^(1-level)."""
    edges = [low, *sorted(breakpoints), high]
    fine = coarse = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        fine += tanh_sinh(f, a, b, 2.0 ** -level)
        coarse += tanh_sinh(f, a, b, 2.0 ** (1 - level))
    return fine, abs(fine - coarse)


def midpoint_2d(f, low, high, n):
    """integral of f over the square [low, high]^2 by the midpoint rule on n x n cells; f takes
    (M, 2) points. Rows are summed a block at a time to bound the memory."""
    np = backend.np
    h = (high - low) / n
    centres = low + (np.arange(n) + 0.5) * h
    total = 0.0
    for start in range(0, n, 256):
        x, y = np.meshgrid(centres, centres[start:start + 256], indexing="ij")
        total += float(f(np.stack((x.ravel(), y.ravel()), axis=1)).sum())
    return total * h * h


def integrate_2d(f, low, high, n=2048):
    """(integral of f over [low, high]^2, error estimate): the midpoint rule on n x n cells,
    the estimate being the difference with n/2 x n/2."""
    fine = midpoint_2d(f, low, high, n)
    return fine, abs(fine - midpoint_2d(f, low, high, n // 2))


# Entropies --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def entropy(name, n=2048):
    """(H, error estimate) of the toy set `name`, in nats (the whole vector, not per
    dimension), in the data's own scale, by numerical integration of -p log p."""
    density, (low, high), breakpoints = DENSITIES[name]
    f = functools.partial(_neg_p_log_p, density)
    if breakpoints is not None:
        return integrate_1d(lambda x: f(x[:, None]), low, high, breakpoints)
    return integrate_2d(f, low, high, n)


def entropy_per_dim(name):
    """H / D in nats per dimension for a set with a known density, else None."""
    if name not in DENSITIES:
        return None
    dim = 1 if DENSITIES[name][2] is not None else 2
    return entropy(name)[0] / dim


# The exact denoiser -----------------------------------------------------------------------

class GaussianMixtureDenoiser:
    """The best possible eps_theta for data from sum_k w_k N(mu_k, s_k^2 I): E[eps | x_t].

    x_t = a x0 + b eps with a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t). Given component
    k, x_t ~ N(a mu_k, v_k I) with v_k = a^2 s_k^2 + b^2 and E[eps | x_t, k] = b (x_t - a mu_k) / v_k;
    the components are weighted by their responsibilities r_k(x_t). A model with the demos'
    interface: forward(x (N, D), network time (float or (N,))) -> (N, D).
    """

    def __init__(self, schedule, weights, means, stds):
        xp = backend.xp
        self.schedule = schedule
        self.alpha_bar = xp.asarray(schedule.host["alpha_bar"])                     # (T,) float64
        self.log_w = xp.log(xp.asarray(weights, dtype=xp.float64))                  # (K,)
        self.mu = xp.asarray(means, dtype=xp.float64)                               # (K, D)
        self.var0 = xp.asarray(stds, dtype=xp.float64) ** 2                         # (K,)

    @classmethod
    def for_data(cls, name, schedule, mean=0.0, std=1.0):
        """The oracle of the toy set `name` in the standardised space (x - mean) / std."""
        weights, means, stds = MIXTURES[name]
        np = backend.np
        return cls(schedule, weights, (np.asarray(means) - mean) / std, np.asarray(stds) / std)

    def forward(self, x, network_time):
        xp = backend.xp
        N, D = x.shape
        t = xp.broadcast_to(self.schedule.step_of(network_time).astype(xp.int64), (N,))
        a2 = self.alpha_bar[t][:, None]                                             # (N, 1)
        a, b = xp.sqrt(a2), xp.sqrt(1 - a2)
        v = a2 * self.var0 + (1 - a2)                                               # (N, K)
        centred = x.astype(xp.float64)[:, None, :] - a[:, :, None] * self.mu        # (N, K, D)
        log_r = self.log_w - 0.5 * (centred ** 2).sum(axis=-1) / v - D / 2 * xp.log(v)
        r = xp.exp(log_r - log_r.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        eps = (r[:, :, None] * b[:, :, None] * centred / v[:, :, None]).sum(axis=1)  # (N, D)
        return eps.astype(backend.dtype)
