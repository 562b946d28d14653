"""`python -m numpy_ddpm.quality --samples runs/mnist/samples.npy --data digits [--labels ...]`:
the Fréchet distance of saved digit samples, beside its floor (evaluation/quality.py, whose names
are importable from here too)."""

import argparse

from . import backend, data
from .app.cli import UserError, run
from .evaluation import quality
from .evaluation.quality import *  # noqa: F403
from .evaluation.quality import report, summary


def main():
    parser = argparse.ArgumentParser(description=quality.__doc__.splitlines()[0])
    parser.add_argument("--samples", required=True, help="a .npy of images (N, 1, H, W) in [0, 1]")
    parser.add_argument("--data", default="digits", help=f"one of: {', '.join(data.IMAGES)}")
    parser.add_argument("--labels", help="a .npy of the labels (N,) the samples were asked for")
    parser.add_argument("--data-dir", help="directory with the IDX files (MNIST, Fashion-MNIST)")
    args = parser.parse_args()
    data.require(args.data, data.IMAGES, "image data set")
    np = backend.np
    try:
        samples = np.load(args.samples, allow_pickle=False)
        labels = None if args.labels is None else np.load(args.labels, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the samples or labels: {error}") from None
    if labels is not None and labels.shape != (len(samples),):
        raise UserError(f"--labels holds shape {labels.shape}, not one label per sample ({len(samples)},)")
    print(summary(report(samples, args.data, labels, args.data_dir, log=print)))


if __name__ == "__main__":
    run(main)
