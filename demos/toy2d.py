"""Train a denoising diffusion model on a toy data set and plot what it generates.

    python demos/toy2d.py                      # the spiral, the lecture's settings, on numpy
    python demos/toy2d.py --data two_discs --backend cupy

1-D sets are drawn as histograms, 2-D sets as scatter plots, generated points in red over the
training data in grey. Writes into --out: toy.png, samples.npy, checkpoint.npz, loss.csv,
loss.png, and with --trajectory trajectory.png and trajectory.gif.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numpy_ddpm import cli, data, metrics, plots  # noqa: E402
from numpy_ddpm.experiment import train_and_sample  # noqa: E402
from numpy_ddpm.models import mlp  # noqa: E402


def main():
    parser = cli.common_parser(__doc__.splitlines()[0], out="runs/toy2d")
    parser.add_argument("--data", default="spiral", help=f"one of: {', '.join(data.TOY)}")
    parser.add_argument("--hidden", type=int, default=256, help="width of the MLP's hidden layers")
    args = parser.parse_args()
    data.require(args.data, data.TOY)
    cli.check_common(args)

    x = data.toy(args.data, args.nb_samples, seed=args.seed)                  # (N, D) host
    model = mlp(x.shape[1], hidden=args.hidden, seed=args.seed)
    meta = {"model": f"mlp(dim={x.shape[1]}, hidden={args.hidden})", "data": args.data}
    # the MLP's small matrix products run faster on one BLAS thread than split over two
    threads = 1 if args.batch_size <= 256 else None
    generated, trainer, frames = train_and_sample(args, x, model, meta, x.shape[1:], blas_threads=threads)

    (distance, floor), (energy, energy_floor) = metrics.distances_to_data(generated, args.data)
    kind = "Wasserstein-1" if x.shape[1] == 1 else "sliced Wasserstein-1"
    print(f"{args.data}: {kind} distance {distance:.4f}, floor {floor:.4f} "
          f"(two draws of the data), distance / floor = {distance / floor:.2f}")
    print(f"{args.data}: energy distance {energy:.5f}, floor {energy_floor:.5f}")

    title = f"{args.data}: {len(generated)} generated points, distance / floor = {distance / floor:.2f}"
    plots.points(x[:5000], generated, os.path.join(args.out, "toy.png"), title)
    if frames:
        plots.trajectory(frames, x[:5000], os.path.join(args.out, "trajectory.png"),
                         os.path.join(args.out, "trajectory.gif"), as_images=False)
    print(f"wrote {args.out}/toy.png, samples.npy, checkpoint.npz, loss.csv")
    cli.show_window(not args.no_window)


if __name__ == "__main__":
    cli.run(main)
