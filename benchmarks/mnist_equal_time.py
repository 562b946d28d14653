"""The U-Net against the lecture's net at equal training time on real MNIST: FD over its floor,
the classifier's confidence, bits/dim, and the two grids side by side (benchmarks/README.md).

Train and sample each first with the demo (both under the same BLAS kernels), for example

    OPENBLAS_CORETYPE=Haswell python demos/mnist.py --model unet --recipe fast --data mnist \\
        --data-dir DIR --nb-generated 1000 --no-window --out runs/unet
    OPENBLAS_CORETYPE=Haswell python demos/mnist.py --model lecture --recipe fast --data mnist \\
        --data-dir DIR --nb-epochs 7 --sampling-steps 100 --nb-generated 1000 --no-window --out runs/lecture

then compare the runs (their samples.npy; the quality measure's MNIST classifier):

    python benchmarks/mnist_equal_time.py --data-dir DIR --runs runs/lecture runs/unet \\
        --names "lecture's net" U-Net --out benchmarks/mnist_equal_time.png

`--checkpoints A.npz B.npz ...` instead samples each checkpoint (the same run at several
training times) with DDIM and scores it the same way: the U-Net's FD against training time.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from numpy_ddpm import backend, models
from numpy_ddpm.diffusion import Schedule, ddim_generate
from numpy_ddpm.evaluation import classifier, quality
from numpy_ddpm.evaluation.plots import image_grid, plt


def scores(samples, data_dir):
    """The quality report of host samples (N, 1, 28, 28) in [0, 1], with the fraction whose
    largest class probability is at least 0.9."""
    result = quality.report(samples, "mnist", data_dir=data_dir, log=print)
    p = classifier.load_or_train("mnist", data_dir).probabilities(samples)
    result["confident"] = float((p.max(axis=1) >= 0.9).mean())
    return result


def line(name, result):
    return (f"| {name} | {result['n']} | {result['fd']:.3g} | {result['floor']:.3g} | {result['ratio']:.2f} | "
            f"{result['confident']:.1%} | {result['mean_entropy']:.2f} |")


def sample_checkpoint(path, nb, nb_steps, seed):
    """nb DDIM samples (eta 1) of the EMA weights saved at `path`, in the data's [0, 1] scale."""
    model, meta = models.load(path)
    mean, std = meta["mean"], meta["std"]
    x = ddim_generate(model, (nb, 1, 28, 28), Schedule(), backend.default_rng(seed), nb_steps=nb_steps, eta=1.0)
    return backend.to_numpy(x) * std + mean, meta.get("step")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the MNIST folder (the test split alone will do)")
    parser.add_argument("--runs", nargs="*", default=[], help="demo output folders, each with samples.npy")
    parser.add_argument("--names", nargs="*", help="a name for each run")
    parser.add_argument("--checkpoints", nargs="*", default=[], help="checkpoints to sample and score")
    parser.add_argument("--nb-generated", type=int, default=1000)
    parser.add_argument("--sampling-steps", type=int, default=100)
    parser.add_argument("--out", help="PNG of the runs' first 100 samples side by side")
    args = parser.parse_args()
    print("| model | samples | FD | floor | FD / floor | max prob >= 0.9 | mean entropy |")
    print("|---|---|---|---|---|---|---|")
    grids = []
    for path, name in zip(args.runs, args.names or args.runs):
        samples = np.load(os.path.join(path, "samples.npy"))
        grids.append((name, samples[:100]))
        print(line(name, scores(samples, args.data_dir)), flush=True)
    for path in args.checkpoints:
        samples, step = sample_checkpoint(path, args.nb_generated, args.sampling_steps, seed=0)
        print(line(f"{os.path.basename(path)} (step {step})", scores(samples, args.data_dir)), flush=True)
    if args.out and grids:
        fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 5.4))
        for ax, (name, samples) in zip(np.atleast_1d(axes), grids):
            ax.imshow(image_grid(np.clip(samples, 0, 1), 10), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name)
            ax.axis("off")
        fig.savefig(args.out, dpi=100, bbox_inches="tight")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
