"""The lecture's toy samplers and the usual 2-D benchmarks.

Samplers run on the host (numpy) with a seeded generator and return arrays of shape (N, D);
`toy` makes them float32, and the training code uploads them once to the backend. A set with
natural classes (the mixture's components, the discs, the moons, ...) returns the pair
(points, labels), labels (N,) integers in 0..K-1; `toy_labelled` gives both, for the
class-conditional models (classifier-free guidance).
"""

import math

from .. import backend
from .errors import DataError, require

# The lecture's samplers (same definitions as its script) ------------------------------------

def gaussian_mixture(n, rng):
    """1-D: two Gaussians of std 0.2 at -0.5 (weight 0.3) and +0.5 (weight 0.7). Labels: the
    component (0: at -0.5, 1: at +0.5)."""
    p, std = 0.3, 0.2
    x = rng.standard_normal((n, 1)) * std
    side = backend.np.sign(rng.random((n, 1)) - p)
    return x + side / 2, (side[:, 0] > 0).astype(backend.np.int64)


def ramp(n, rng):
    """1-D: density 2(1 - x) on [0, 1], the minimum of two uniforms."""
    return backend.np.minimum(rng.random((n, 1)), rng.random((n, 1)))


def two_discs(n, rng):
    """2-D: discs of radius 0.3 at (-0.5, -0.5) and 0.5 at (0.5, 0.5), equally likely. Labels:
    the disc (0: the small one, 1: the large one)."""
    np = backend.np
    a = rng.random(n) * math.pi * 2
    b = np.sqrt(rng.random(n))
    q = (rng.random(n) <= 0.5).astype(np.int64)
    b = b * (0.3 + 0.2 * q)
    return np.stack((np.cos(a) * b - 0.5 + q, np.sin(a) * b - 0.5 + q), axis=1), q


def disc_grid(n, rng):
    """2-D: a 4x4 grid of discs of radius 0.1 over [-1, 1]^2. Labels: the cell, 4 column + row."""
    np = backend.np
    a = rng.random(n) * math.pi * 2
    b = np.sqrt(rng.random(n)) * 0.1
    N = 4
    column, row = rng.integers(0, N, n), rng.integers(0, N, n)
    q = (column - (N - 1) / 2) / ((N - 1) / 2)
    r = (row - (N - 1) / 2) / ((N - 1) / 2)
    return np.stack((np.cos(a) * b + q, np.sin(a) * b + r), axis=1), N * column + row


def spiral(n, rng):
    """2-D: one and a half turns of a spiral band."""
    np = backend.np
    u = rng.random(n)
    rho = u * 0.65 + 0.25 + rng.random(n) * 0.15
    theta = u * math.pi * 3
    return np.stack((np.cos(theta) * rho, np.sin(theta) * rho), axis=1)


# The usual 2-D benchmarks of the generative-modelling literature ------------------------------

def moons(n, rng, noise=0.1):
    """Two interleaving half circles. Labels: the moon (0: the upper one)."""
    np = backend.np
    upper = rng.random(n) < 0.5
    theta = rng.random(n) * math.pi
    x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    return np.stack((x, y), axis=1) + noise * rng.standard_normal((n, 2)), (~upper).astype(np.int64)


def swiss_roll(n, rng, noise=0.5):
    """A 2-D spiral x = t cos t, y = t sin t for t in [1.5 pi, 4.5 pi], scaled by 1/5."""
    np = backend.np
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    points = np.stack((t * np.cos(t), t * np.sin(t)), axis=1) + noise * rng.standard_normal((n, 2))
    return points / 5


def eight_gaussians(n, rng, std=0.25):
    """Eight Gaussians evenly spaced on a circle of radius 2. Labels: the Gaussian, by angle."""
    np = backend.np
    k = rng.integers(0, 8, n)
    angle = k * (math.pi / 4)
    centers = 2 * np.stack((np.cos(angle), np.sin(angle)), axis=1)
    return centers + std * rng.standard_normal((n, 2)), k


def checkerboard(n, rng):
    """Uniform on the 8 black squares of a 4x4 checkerboard over [-2, 2]^2. Labels: the square,
    2 column + (0: lower, 1: upper)."""
    np = backend.np
    x = rng.random(n) * 4 - 2
    u, upper = rng.random(n), rng.integers(0, 2, n)
    y = u + upper * 2 - 2                                 # in [-2, -1) or [0, 1)
    y = y + np.floor(x) % 2                               # shift every other column up
    return np.stack((x, y), axis=1), 2 * np.floor(x + 2).astype(np.int64) + upper


def circles(n, rng, noise=0.05):
    """Two concentric circles of radius 1 and 0.5. Labels: the circle (0: the outer one)."""
    np = backend.np
    outer = rng.random(n) < 0.5
    radius = np.where(outer, 1.0, 0.5)
    theta = rng.random(n) * 2 * math.pi
    points = np.stack((radius * np.cos(theta), radius * np.sin(theta)), axis=1)
    return points + noise * rng.standard_normal((n, 2)), (~outer).astype(np.int64)


TOY = {f.__name__: f for f in (gaussian_mixture, ramp, two_discs, disc_grid, spiral,
                               moons, swiss_roll, eight_gaussians, checkerboard, circles)}


NB_CLASSES = {"gaussian_mixture": 2, "two_discs": 2, "disc_grid": 16, "moons": 2, "circles": 2,
              "eight_gaussians": 8, "checkerboard": 8}     # the sets with natural classes


def toy_labelled(name, n, seed=0):
    """(points, labels): n points of the toy set `name` as a float32 host array (n, D) and,
    for a set with classes, their labels (n,) in 0..NB_CLASSES[name] - 1 (None otherwise)."""
    require(name, TOY)
    if n < 1:
        raise DataError(f"the number of samples must be at least 1, not {n}")
    drawn = TOY[name](n, backend.host_rng(seed))
    points, labels = drawn if name in NB_CLASSES else (drawn, None)
    return points.astype(backend.np.float32), labels


def toy(name, n, seed=0):
    """n points of the toy data set `name` as a float32 host array (n, D)."""
    return toy_labelled(name, n, seed)[0]


def require_classes(name):
    """Raise DataError unless the toy set `name` has classes (for --conditional)."""
    if name not in NB_CLASSES:
        raise DataError(f"{name} has no classes to condition on; --conditional needs one of: "
                        f"{', '.join(NB_CLASSES)}")


def standardise(x):
    """(x - mean) / std with the data set's mean and std over all entries, as in the lecture;
    returns (standardised x, mean, std)."""
    mean, std = float(x.mean()), float(x.std())
    return (x - mean) / std, mean, std
