"""Train a denoising diffusion model on a toy data set and plot what it generates.

    python demos/toy2d.py                      # the spiral, the lecture's settings, on numpy
    python demos/toy2d.py --data two_discs --backend cupy
    python demos/toy2d.py --resume runs/toy2d/checkpoint.npz --sampler ddim --sampling-steps 20
    python demos/toy2d.py --resume runs/toy2d/checkpoint.npz --sampler dpm++ --sampling-steps 10
    python demos/toy2d.py --data two_discs --conditional --guidance 3

1-D sets are drawn as histograms, 2-D sets as scatter plots, generated points in red over the
training data in grey (coloured by class with --conditional, their labels spread evenly over
the classes, or all of --label). Writes into --out: toy.png, samples.npy, checkpoint.npz,
loss.csv, loss.png, with --conditional labels.npy (the class asked for each row of
samples.npy), and with --trajectory trajectory.png and trajectory.gif.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np

from numpy_ddpm import backend, data, likelihood
from numpy_ddpm.app import cli
from numpy_ddpm.app.experiment import train_and_sample
from numpy_ddpm.evaluation import exact, metrics, plots
from numpy_ddpm.models import mlp

# --recipe fast: a 128-wide MLP (a quarter of the lecture's multiply-adds per point) trained on
# 4410 batches of 512 (the lecture: 100,000 of 25) with a learning rate of 1e-2 after 100 warm-up
# steps and a cosine decay, an EMA that ramps up with the step count, time steps drawn as
# floor(T u^2) (small t more often), then 200 DDIM steps at eta 0.7; chosen by
# benchmarks/recipes.py, recipe_noise.py and the sweeps listed in benchmarks/README.md. It skips
# the variational bound (1000 network passes over 2000 points: a fifth of its whole process)
# unless --bound is given.
FAST = dict(hidden=128, batch_size=512, learning_rate=1e-2, lr_schedule="cosine", warmup_steps=100,
            ema_decay=0.999, ema_warmup=True, t_power=2.0, nb_epochs=90, sampler="ddim", sampling_steps=200,
            eta=0.7, no_bound=True)


def parser():
    """The demo's flags (benchmarks/recipe_noise.py reads a run's settings through it too)."""
    parser = cli.common_parser(__doc__.splitlines()[0], out="runs/toy2d", recipes={"fast": FAST})
    parser.add_argument("--data", default="spiral", help=f"one of: {', '.join(data.TOY)}")
    parser.add_argument("--hidden", type=int, default=256, help="width of the MLP's hidden layers")
    parser.add_argument("--label", type=int, default=None, help="with --conditional: draw only this class")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--no-bound", action="store_true",
                       help="skip the variational bound (all T terms over 2000 fresh points) and bound.png")
    bound.add_argument("--bound", dest="no_bound", action="store_false", default=argparse.SUPPRESS,
                       help="compute the bound even with --recipe fast, which skips it")
    return parser


def main():
    args = cli.parse(parser())
    data.require(args.data, data.TOY)
    if args.conditional:
        data.require_classes(args.data)
        K = data.NB_CLASSES[args.data]
        if args.label is not None and not 0 <= args.label < K:
            raise cli.UserError(f"--label must be a class of {args.data}, 0 to {K - 1}, not {args.label}")
    cli.check_common(args)

    x, labels = data.toy_labelled(args.data, args.nb_samples, seed=args.seed)  # (N, D), (N,) host
    sample_labels = None
    if args.conditional:
        # the classes spread evenly over the generated points, or --label for all
        sample_labels = np.full(args.nb_generated, args.label) if args.label is not None \
            else np.arange(args.nb_generated) % K
    model = mlp(x.shape[1], hidden=args.hidden, seed=args.seed, nb_classes=K if args.conditional else None)
    meta = {"data": args.data}
    # the MLP's small matrix products run faster on one BLAS thread than split over two; larger
    # batches take whichever is faster while training (two idle, one beside a busy program)
    threads = 1 if args.batch_size <= 256 else "auto"
    run = train_and_sample(args, x, model, meta, x.shape[1:], blas_threads=threads,
                           labels=labels if args.conditional else None, sample_labels=sample_labels)
    if run is None:             # another rank of a distributed run: rank 0 writes the results
        return
    generated, trainer, frames = run
    if args.conditional:
        np.save(os.path.join(args.out, "labels.npy"), sample_labels)

    (distance, floor), (energy, energy_floor) = metrics.distances_to_data(generated, args.data)
    kind = "Wasserstein-1" if x.shape[1] == 1 else "sliced Wasserstein-1"
    print(f"{args.data}: {kind} distance {distance:.4f}, floor {floor:.4f} "
          f"(two draws of the data), distance / floor = {distance / floor:.2f}")
    print(f"{args.data}: energy distance {energy:.5f}, floor {energy_floor:.5f}")

    if not args.no_bound:       # the lecture's bound on fresh points, beside the exact NLL where known
        fresh = data.toy(args.data, 2000, seed=args.seed + 12345)
        null = backend.asarray(np.full(len(fresh), K)) if args.conditional else None     # "no label"
        likelihood.report(model, fresh, trainer.meta["mean"], trainer.meta["std"], trainer.schedule,
                          backend.default_rng(args.seed, 7_000_003), args.out,
                          exact=exact.entropy_per_dim(args.data), labels=null, title=args.data)

    title = f"{args.data}: {len(generated)} generated points, distance / floor = {distance / floor:.2f}"
    if args.conditional:
        title = f"{args.data}: {len(generated)} points, guidance s = {args.guidance:g}, coloured by class"
    plots.points(x[:5000], generated, os.path.join(args.out, "toy.png"), title, labels=sample_labels)
    if frames:
        plots.trajectory(frames, x[:5000], os.path.join(args.out, "trajectory.png"),
                         os.path.join(args.out, "trajectory.gif"), as_images=False)
    written = ["toy.png", "samples.npy"] + ["labels.npy"] * args.conditional + ["bound.png"] * (not args.no_bound)
    written += ["checkpoint.npz", "loss.csv"] if trainer.losses else []          # none when only sampling
    print(f"wrote {args.out}/{', '.join(written)}")
    cli.show_window(not args.no_window)


if __name__ == "__main__":
    cli.run(main)
