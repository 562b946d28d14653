"""Data sets: the lecture's toy samplers, the usual 2-D benchmarks, and images.

Samplers run on the host (numpy) with a seeded generator and return float32 arrays of shape
(N, D); the training code uploads them once to the backend.
"""

import math

from . import backend


class DataError(ValueError):
    """A data set that cannot be had: unknown name, missing files, bad format."""


# The lecture's samplers (same definitions as its script) ------------------------------------

def gaussian_mixture(n, rng):
    """1-D: two Gaussians of std 0.2 at -0.5 (weight 0.3) and +0.5 (weight 0.7)."""
    p, std = 0.3, 0.2
    x = rng.standard_normal((n, 1)) * std
    return x + backend.np.sign(rng.random((n, 1)) - p) / 2


def ramp(n, rng):
    """1-D: density 2(1 - x) on [0, 1], the minimum of two uniforms."""
    return backend.np.minimum(rng.random((n, 1)), rng.random((n, 1)))


def two_discs(n, rng):
    """2-D: discs of radius 0.3 at (-0.5, -0.5) and 0.5 at (0.5, 0.5), equally likely."""
    np = backend.np
    a = rng.random(n) * math.pi * 2
    b = np.sqrt(rng.random(n))
    q = (rng.random(n) <= 0.5).astype(np.int64)
    b = b * (0.3 + 0.2 * q)
    return np.stack((np.cos(a) * b - 0.5 + q, np.sin(a) * b - 0.5 + q), axis=1)


def disc_grid(n, rng):
    """2-D: a 4x4 grid of discs of radius 0.1 over [-1, 1]^2."""
    np = backend.np
    a = rng.random(n) * math.pi * 2
    b = np.sqrt(rng.random(n)) * 0.1
    N = 4
    q = (rng.integers(0, N, n) - (N - 1) / 2) / ((N - 1) / 2)
    r = (rng.integers(0, N, n) - (N - 1) / 2) / ((N - 1) / 2)
    return np.stack((np.cos(a) * b + q, np.sin(a) * b + r), axis=1)


def spiral(n, rng):
    """2-D: one and a half turns of a spiral band."""
    np = backend.np
    u = rng.random(n)
    rho = u * 0.65 + 0.25 + rng.random(n) * 0.15
    theta = u * math.pi * 3
    return np.stack((np.cos(theta) * rho, np.sin(theta) * rho), axis=1)


# The usual 2-D benchmarks of the generative-modelling literature ------------------------------

def moons(n, rng, noise=0.1):
    """Two interleaving half circles."""
    np = backend.np
    upper = rng.random(n) < 0.5
    theta = rng.random(n) * math.pi
    x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    return np.stack((x, y), axis=1) + noise * rng.standard_normal((n, 2))


def swiss_roll(n, rng, noise=0.5):
    """A 2-D spiral x = t cos t, y = t sin t for t in [1.5 pi, 4.5 pi], scaled by 1/5."""
    np = backend.np
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    points = np.stack((t * np.cos(t), t * np.sin(t)), axis=1) + noise * rng.standard_normal((n, 2))
    return points / 5


def eight_gaussians(n, rng, std=0.25):
    """Eight Gaussians evenly spaced on a circle of radius 2."""
    np = backend.np
    angle = rng.integers(0, 8, n) * (math.pi / 4)
    centers = 2 * np.stack((np.cos(angle), np.sin(angle)), axis=1)
    return centers + std * rng.standard_normal((n, 2))


def checkerboard(n, rng):
    """Uniform on the 8 black squares of a 4x4 checkerboard over [-2, 2]^2."""
    np = backend.np
    x = rng.random(n) * 4 - 2
    y = rng.random(n) + rng.integers(0, 2, n) * 2 - 2     # in [-2, -1) or [0, 1)
    y = y + np.floor(x) % 2                               # shift every other column up
    return np.stack((x, y), axis=1)


def circles(n, rng, noise=0.05):
    """Two concentric circles of radius 1 and 0.5."""
    np = backend.np
    radius = np.where(rng.random(n) < 0.5, 1.0, 0.5)
    theta = rng.random(n) * 2 * math.pi
    points = np.stack((radius * np.cos(theta), radius * np.sin(theta)), axis=1)
    return points + noise * rng.standard_normal((n, 2))


TOY = {f.__name__: f for f in (gaussian_mixture, ramp, two_discs, disc_grid, spiral,
                               moons, swiss_roll, eight_gaussians, checkerboard, circles)}


def toy(name, n, seed=0):
    """n points of the toy data set `name` as a float32 host array (n, D)."""
    if name not in TOY:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(TOY)}")
    if n < 1:
        raise DataError(f"the number of samples must be at least 1, not {n}")
    return TOY[name](n, backend.host_rng(seed)).astype(backend.np.float32)


def standardise(x):
    """(x - mean) / std with the data set's mean and std over all entries, as in the lecture;
    returns (standardised x, mean, std)."""
    mean, std = float(x.mean()), float(x.std())
    return (x - mean) / std, mean, std
