"""The lecture's picture of the forward process: a toy data set diffused to t = 0, 125, ..., 1000.

    python demos/forward_process.py --data spiral

Each panel draws x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) for the
same standardised points x_0: the data melts into N(0, I). Writes --out/forward_process.png.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numpy_ddpm import backend, data
from numpy_ddpm.app import cli
from numpy_ddpm.diffusion import q_sample
from numpy_ddpm.schedule import Schedule

TIMES = [0, 125, 250, 375, 500, 625, 750, 875, 1000]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="spiral", help=f"one of: {', '.join(data.TOY)}")
    parser.add_argument("--nb-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/forward_process")
    parser.add_argument("--no-window", action="store_true")
    args = parser.parse_args()
    x0, _, _ = data.standardise(data.toy(args.data, args.nb_samples, seed=args.seed))
    os.makedirs(args.out, exist_ok=True)

    from numpy_ddpm.evaluation import plots
    schedule = Schedule()
    rng = backend.host_rng(args.seed)
    fig, axes = plots.plt.subplots(1, len(TIMES), figsize=(2 * len(TIMES), 2.4))
    for ax, t in zip(axes, TIMES):
        if t == 0:
            xt = x0
        else:   # the paper's x_t is array index t - 1
            index = backend.np.full(len(x0), t - 1)
            xt = q_sample(x0, index, rng.standard_normal(x0.shape).astype(x0.dtype), schedule)
        if x0.shape[1] == 1:
            ax.hist(xt[:, 0], 60, range=(-4, 4), color="tab:blue")
        else:
            ax.scatter(xt[:, 0], xt[:, 1], s=1, rasterized=True)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"t = {t}")
    path = os.path.join(args.out, "forward_process.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"wrote {path}")
    cli.show_window(not args.no_window)


if __name__ == "__main__":
    cli.run(main)
