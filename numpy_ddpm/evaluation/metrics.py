"""How close generated samples are to the true distribution.

A distance means little alone: each is reported next to its floor, the same distance between
two independent draws of the true data of the same size, and `distance / floor` near 1 means
the samples are as good as a fresh draw of the data.
"""

import math

from .. import backend
from ..data import toy


def wasserstein_1d(a, b):
    """Exact 1-Wasserstein distance between the empirical distributions of 1-D samples.

    For equal sizes it is mean |sort(a) - sort(b)|; otherwise the quantile functions are
    compared on the union of their breakpoints."""
    np = backend.np
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    if a.size == b.size:
        return float(np.abs(a - b).mean())
    levels = np.union1d(np.arange(1, a.size + 1) / a.size, np.arange(1, b.size + 1) / b.size)
    widths = np.diff(np.concatenate(([0.0], levels)))
    qa = a[np.minimum((levels * a.size - 1e-9).astype(int), a.size - 1)]
    qb = b[np.minimum((levels * b.size - 1e-9).astype(int), b.size - 1)]
    return float((widths * np.abs(qa - qb)).sum())


def projections(dim, nb_projections=128, seed=0):
    """Unit directions: evenly spaced half-circle angles in 2-D, seeded random ones otherwise."""
    np = backend.np
    if dim == 1:
        return np.ones((1, 1))
    if dim == 2:
        angle = np.arange(nb_projections) * math.pi / nb_projections
        return np.stack((np.cos(angle), np.sin(angle)), axis=1)
    u = backend.host_rng(seed).standard_normal((nb_projections, dim))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def sliced_wasserstein(a, b, nb_projections=128):
    """Mean over fixed directions of the 1-D Wasserstein distance of the projected samples
    (exact Wasserstein for 1-D data)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    directions = projections(a.shape[1], nb_projections)
    return sum(wasserstein_1d(a @ u, b @ u) for u in directions) / len(directions)


def energy_distance(a, b):
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between samples a (N, D) and b (M, D),
    with the V-statistic means over all pairs; zero only when the distributions agree."""
    np = backend.np
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return 2 * mean_distance(a, b) - mean_distance(a, a) - mean_distance(b, b)


def mean_distance(u, v, rows=1000):
    """The mean of |u_i - v_j| over all pairs, float64 (N, D) and (M, D), `rows` rows of u at a
    time: |u_i - v_j|^2 = |u_i|^2 + |v_j|^2 - 2 u_i . v_j, one matrix product per block, so
    5000 x 5000 pairs take (rows, M) temporaries, not the (N, M, D) of the differences."""
    np = backend.np
    v_squared = (v * v).sum(axis=1)
    total = 0.0
    for start in range(0, len(u), rows):
        block = u[start:start + rows]
        squared = (block * block).sum(axis=1)[:, None] + v_squared[None, :] - 2 * block @ v.T
        total += float(np.sqrt(np.maximum(squared, 0)).sum())     # round-off can dip below 0 at u_i = v_j
    return total / (len(u) * len(v))


def fresh_draws(data_name, n, seed=12345):
    """Two independent draws of n points of the toy set: the reference and the floor's other."""
    return toy(data_name, n, seed=seed), toy(data_name, n, seed=seed + 1)


def distance_to_data(samples, data_name, seed=12345):
    """(distance, floor) of host samples (N, D) against fresh draws of the toy set `data_name`:
    the sliced Wasserstein distance to one draw, and between that draw and another."""
    reference, other = fresh_draws(data_name, len(samples), seed)
    return sliced_wasserstein(samples, reference), sliced_wasserstein(other, reference)


def distances_to_data(samples, data_name, seed=12345):
    """[(sliced Wasserstein, floor), (energy distance, floor)] from the same fresh draws."""
    reference, other = fresh_draws(data_name, len(samples), seed)
    return [(distance(samples, reference), distance(other, reference))
            for distance in (sliced_wasserstein, energy_distance)]
