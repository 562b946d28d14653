"""The variational bound as the demos report it: nats per dimension on fresh toy points beside
the exact NLL, with a figure of its terms, and bits per dimension on held-out images. The bound
itself is diffusion/bound.py."""

import math
import os
import time

from .. import backend
from ..diffusion.bound import _per_example, all_terms, bits_per_dim
from ..diffusion.sampling import chunk_rows
from ..nn import evaluating


def report(model, x_fresh, mean, std, schedule, rng, out_dir=None, exact=None, nb_timesteps=None,
           variance="beta", labels=None, title=None):
    """The toy demos' line and figure: the bound over fresh data points x_fresh (N, D), a host
    array in the data's own scale, in nats per dimension of that scale (standardised bound +
    log std), next to the exact NLL `exact` (nats/dim, or None). With all T terms
    (nb_timesteps None) also writes out_dir/bound.png. Returns a dict of the numbers."""
    xp = backend.xp
    D = math.prod(x_fresh.shape[1:])
    x0 = xp.asarray((x_fresh - mean) / std, dtype=xp.float64)
    start = time.perf_counter()
    terms = None
    if nb_timesteps is None:
        per_example, terms = bound_terms_and_spread(model, x0, schedule, rng, variance, labels)
    else:
        per_example = _per_example(model, x0, schedule, rng, nb_timesteps, variance, None, labels, 1000)
    seconds = time.perf_counter() - start
    N = per_example.shape[0]
    bound = float(per_example.mean()) / D + math.log(std)
    stderr = float(per_example.std(ddof=1)) / math.sqrt(N) / D
    result = {"bound": bound, "stderr": stderr, "exact": exact, "variance": variance,
              "gap": None if exact is None else bound - exact, "nb_points": N, "seconds": seconds}
    if exact is None:
        print(f"NLL bound: {bound:.4f} ± {stderr:.4f} nats/dim (exact: unknown)")
    else:
        print(f"NLL bound: {bound:.4f} ± {stderr:.4f} nats/dim "
              f"(exact: {exact:.4f}, gap: {bound - exact:.4f})")
    if terms is not None:
        terms[0] += math.log(std)       # L_0, the only term that is a density, to the data's scale
        result["terms"] = terms
        if out_dir is not None:
            from . import plots  # matplotlib, only when a figure is asked for
            os.makedirs(out_dir, exist_ok=True)
            plots.bound(terms, exact, os.path.join(out_dir, "bound.png"), title)
    return result


def bound_terms_and_spread(model, x0, schedule, rng, variance="beta", labels=None, batch_size=1000):
    """(each example's bound (N,) in nats, the mean terms (T + 1,) per dimension on the host):
    bound_terms and nll_bound from one pass of all T terms."""
    xp = backend.xp
    D = math.prod(x0.shape[1:])
    totals, sums = [], 0
    with evaluating(model):
        for start in range(0, x0.shape[0], batch_size):
            y = None if labels is None else labels[start:start + batch_size]
            terms = all_terms(model, x0[start:start + batch_size], schedule, rng, variance, None, y)
            totals.append(terms.sum(axis=0))
            sums = sums + terms.sum(axis=1)
    return xp.concatenate(totals), backend.to_numpy(sums) / x0.shape[0] / D


IMAGE_LEVELS = {"digits": 17, "mnist": 256, "fashion_mnist": 256}   # pixels k / 16, k / 255
def image_report(model, x_held_out, mean, std, nb_levels, schedule, rng, nb_timesteps=None,
                 variance="beta", labels=None):
    """The image demo's line: bits per dimension of held-out images x_held_out (N, C, H, W), a
    host array of pixels k / (nb_levels - 1), with the discretised decoder. Returns the numbers."""
    x0 = backend.xp.asarray((x_held_out - mean) / std, dtype=backend.xp.float64)
    start = time.perf_counter()
    bits, stderr = bits_per_dim(model, x0, schedule, rng, nb_levels, mean, std, nb_timesteps, variance,
                                labels, batch_size=min(500, chunk_rows(x0.shape)))     # 83 at 28x28
    seconds = time.perf_counter() - start
    how = "all T terms" if nb_timesteps is None else f"{nb_timesteps} sampled t per image"
    print(f"NLL bound: {bits:.4f} ± {stderr:.4f} bits/dim on {len(x_held_out)} held-out images "
          f"(discretised decoder, {nb_levels} levels, {how})")
    return {"bits_per_dim": bits, "stderr": stderr, "nb_images": len(x_held_out), "seconds": seconds}
