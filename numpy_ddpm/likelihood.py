"""`python -m numpy_ddpm.likelihood --checkpoint runs/toy2d/checkpoint.npz`: the variational
bound of a saved run, in nats/dim (toy sets, beside the exact NLL) or bits/dim (images).

The bound is diffusion/bound.py, the demos' reports of it evaluation/likelihood.py; the names
this module had before are importable from here.
"""

import argparse
import os

from . import backend, data, models
from .app.cli import UserError, run
from .diffusion.bound import *  # noqa: F403
from .diffusion.bound import VARIANCES
from .diffusion.schedule import Schedule
from .evaluation.exact import entropy_per_dim
from .evaluation.likelihood import IMAGE_LEVELS, bound_terms_and_spread, image_report, report  # noqa: F401
from .models import parse_description


def parse_model(description):
    """("mlp", {"dim": 2, "hidden": 256}) from a checkpoint's model description (models.build)."""
    parsed = parse_description(description) if isinstance(description, str) else description
    return parsed["name"], parsed["kwargs"]


def load_model(path, weights="ema"):
    """(model, meta, nb_classes or None) from a demo's checkpoint, with its EMA weights (what the
    demos sample with) or the raw ones (models.load). A conditional model is evaluated
    unconditionally, with the "no label" class K = nb_classes."""
    model, meta = models.load(path, weights)
    return model, meta, model.nb_classes


def main(argv=None):
    parser = argparse.ArgumentParser(description="The variational bound of a saved run, in nats/dim "
                                     "(toy sets) or bits/dim (images).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--nb-points", type=int, default=2000, help="fresh toy points (images: all held out)")
    parser.add_argument("--nb-timesteps", type=int, default=None,
                        help="sample that many t per example instead of all T")
    parser.add_argument("--variance", choices=VARIANCES, default="beta",
                        help="the reverse variance sigma_t^2")
    parser.add_argument("--weights", choices=["ema", "params"], default="ema")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="directory with the IDX files (MNIST, Fashion-MNIST)")
    parser.add_argument("--out", help="where to write bound.png (default: beside the checkpoint)")
    args = parser.parse_args(argv)
    if args.nb_points < 2 or (args.nb_timesteps is not None and args.nb_timesteps < 1):
        raise UserError("--nb-points must be at least 2 and --nb-timesteps at least 1")
    model, meta, nb_classes = load_model(args.checkpoint, args.weights)
    mean, std, name = meta["mean"], meta["std"], meta.get("data")
    schedule, rng = Schedule(), backend.default_rng(args.seed, 7_000_003)
    if name in data.TOY:
        x = data.toy(name, args.nb_points, seed=args.seed + 12345)
        labels = None if nb_classes is None else backend.xp.full(len(x), nb_classes)
        out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
        report(model, x, mean, std, schedule, rng, out, entropy_per_dim(name), args.nb_timesteps,
               args.variance, labels, title=name)
    elif name in IMAGE_LEVELS:
        x = data.held_out(name, args.data_dir)
        labels = None if nb_classes is None else backend.xp.full(len(x), nb_classes)
        image_report(model, x, mean, std, IMAGE_LEVELS[name], schedule, rng, args.nb_timesteps, args.variance,
                     labels)
    else:
        raise UserError(f"{args.checkpoint} was trained on {name!r}, a data set the bound does not know")


if __name__ == "__main__":
    run(main)
