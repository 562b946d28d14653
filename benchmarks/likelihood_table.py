"""The variational bound of trained toy models against the exact NLL: the closing note's table.

    python demos/toy2d.py --data NAME --no-window --no-progress --out runs/nll/NAME    # each set
    python benchmarks/likelihood_table.py --runs runs/nll

For each set: the exact NLL (the differential entropy, exact.py), the bound of the exact
denoiser where the data is a Gaussian mixture (what 1000 steps with fixed variances cost
even with a perfect network), the trained model's bound with sigma_t^2 = beta_t and
beta_tilde_t, and the gap; all in nats per dimension of the data's own scale, on 2000 fresh
points with all T terms. Every bound draws the same x_t (the same generator seed), so their
differences are known better than their standard errors say. Writes bound.png beside each
checkpoint (beta variance) and prints a Markdown table; the seconds are rough (shared CPU).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numpy_ddpm import backend, data, likelihood
from numpy_ddpm.evaluation import exact
from numpy_ddpm.schedule import Schedule

SETS = ["gaussian_mixture", "ramp", "two_discs", "disc_grid", "checkerboard"]


def evaluate(name, runs, nb_points, seed):
    schedule = Schedule()
    x = data.toy(name, nb_points, seed=seed)
    h, h_error = exact.entropy(name)
    dim = x.shape[1]
    row = {"set": name, "exact": h / dim, "exact_error": h_error / dim}
    path = os.path.join(runs, name, "checkpoint.npz")
    model, meta, _ = likelihood.load_model(path)
    mean, std = meta["mean"], meta["std"]
    if name in exact.MIXTURES:
        oracle = exact.GaussianMixtureDenoiser.for_data(name, schedule, mean, std)
        rng = backend.default_rng(seed, 2)
        row["oracle"] = likelihood.report(oracle, x, mean, std, schedule, rng, exact=row["exact"])
    for variance in likelihood.VARIANCES:
        start = time.perf_counter()
        out = os.path.join(runs, name) if variance == "beta" else None
        rng = backend.default_rng(seed, 2)
        row[variance] = likelihood.report(model, x, mean, std, schedule, rng, out, row["exact"],
                                          variance=variance, title=f"{name}, sigma_t^2 = beta_t")
        row[variance]["seconds"] = time.perf_counter() - start
    return row


def cell(result):
    return f"{result['bound']:.3f} ± {result['stderr']:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/nll", help="directory with one run per set, named after it")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--nb-points", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=12345,
                        help="of the fresh points (the runs train on seed 0)")
    args = parser.parse_args()
    rows = [evaluate(name, args.runs, args.nb_points, args.seed) for name in args.sets.split(",")]
    print()
    print("| set | exact NLL | oracle bound | trained, beta | trained, beta_tilde "
          "| gap (beta) | gap (beta_tilde) | s per bound |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        oracle = cell(row["oracle"]) if "oracle" in row else "-"
        print(f"| {row['set']} | {row['exact']:.4f} | {oracle} | {cell(row['beta'])} "
              f"| {cell(row['beta_tilde'])} | {row['beta']['gap']:.3f} | {row['beta_tilde']['gap']:.3f} "
              f"| {row['beta']['seconds']:.0f} |")


if __name__ == "__main__":
    main()
