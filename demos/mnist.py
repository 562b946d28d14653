"""Train the lecture's conv net as a denoising diffusion model on digit images.

    python demos/mnist.py                                  # 8x8 digits, offline, a few CPU minutes
    python demos/mnist.py --recipe fast                    # the same digits in under a quarter of the time
    python demos/mnist.py --data mnist --nb-samples 25000 --nb-epochs 100 --backend cupy
                                                           # the lecture's configuration (a GPU job)
    python demos/mnist.py --conditional --guidance-sweep 0,1,3,7
                                                           # one row per digit, four guidance scales

Writes into --out: images.png (training images on top, generated ones below), samples.npy,
checkpoint.npz, loss.csv, loss.png, and with --trajectory trajectory.png and trajectory.gif.
With --conditional, images.png has one row per class (0 to 9) and labels.npy the class of each
row of samples.npy; --guidance-sweep adds guidance.png, the same grid (from the same noise) for
each guidance scale, side by side, and its samples as samples_guidance_S.npy.
MNIST and Fashion-MNIST are read from --data-dir, or downloaded once into ~/.cache/numpy-ddpm.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np

from numpy_ddpm import backend, data, likelihood, quality
from numpy_ddpm.app import cli
from numpy_ddpm.app.experiment import sample_again, train_and_sample
from numpy_ddpm.evaluation import plots
from numpy_ddpm.models import convnet

NB_CLASSES = 10      # the digits 0 to 9 (Fashion-MNIST: its 10 kinds of clothing)

# --recipe fast: 40 epochs instead of 150 (2,400 steps of the same batch of 25, so the same cost per
# step) at 3x the learning rate, warmed up over 200 steps then decayed by a cosine, an EMA that
# ramps up with the step count, and 50 DDIM steps instead of Algorithm 2's 1000: about a quarter
# of the default's time. Chosen by experiment on the 8x8 digits, by FD / floor over 148 DDIM
# samples (the default's weights: 2.4): at 40 epochs 3e-3 gave 3.2, 2e-3 3.35, 4e-3 3.4 (1e-3 was
# the worst at 30), a linear decay 3.4, a plain EMA of 0.998 3.55, batch 50 3.65 for the same images
# seen (batch 10 did no better than 25 and costs more per image); 30 and 35 epochs gave 3.8 and
# 3.5. DDIM needs eta = 1: with eta = 0 the default's own weights score 2.12 instead of 1.36 (64
# samples), with noisy backgrounds. The demo prints 1.65 (default: 1.45): clear digits, a few more
# malformed.
FAST = dict(batch_size=25, learning_rate=3e-3, lr_schedule="cosine", warmup_steps=200, ema_warmup=True,
            nb_epochs=40, sampler="ddim", sampling_steps=50, eta=1.0)


def guidance_values(args):
    """The scales of --guidance-sweep as floats ([] without it); a sentence if wrong."""
    if not args.guidance_sweep:
        return []
    if not args.conditional:
        raise cli.UserError("--guidance-sweep needs --conditional (a class-conditional model)")
    try:
        values = [float(v) for v in args.guidance_sweep.split(",")]
    except ValueError:
        raise cli.UserError(f"--guidance-sweep takes numbers separated by commas, "
                            f"not {args.guidance_sweep!r}") from None
    if any(not v >= 0 for v in values):
        raise cli.UserError(f"--guidance-sweep values must be 0 or more, not {args.guidance_sweep}")
    return values


def main():
    # CPU-sized defaults: the first 1500 digits (the last 297 are held out for the bound and the
    # quality measure) for 150 epochs (9,000 steps); with so few steps the lecture's EMA decay of
    # 0.9999 would still weigh the initial weights at 41%, hence 0.999
    parser = cli.common_parser(__doc__.splitlines()[0], out="runs/mnist", nb_epochs=150,
                               nb_samples=1500, nb_generated=64, ema_decay=0.999, recipes={"fast": FAST})
    parser.add_argument("--data", default="digits", help=f"one of: {', '.join(data.IMAGES)}")
    parser.add_argument("--data-dir", help="directory with the IDX files (MNIST, Fashion-MNIST)")
    parser.add_argument("--width", type=int, default=64, help="channels of the hidden convolutions")
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--guidance-sweep", metavar="S1,S2,...",
                        help="with --conditional: also draw the grid at each of these guidance scales")
    parser.add_argument("--no-bound", action="store_true", help="skip the bits/dim bound on held-out images")
    parser.add_argument("--bound-timesteps", type=int, default=50,
                        help="sampled t per held-out image for the bound (an unbiased estimate; 0: all T)")
    args = cli.parse(parser)
    data.require(args.data, data.IMAGES, "image data set")
    if args.width < 1 or args.kernel_size < 1 or args.kernel_size % 2 == 0:
        raise cli.UserError("--width must be positive and --kernel-size a positive odd number")
    sweep = guidance_values(args)
    cli.check_common(args)

    loaded = data.images(args.data, args.nb_samples, data_dir=args.data_dir, labels=args.conditional)
    x, labels = loaded if args.conditional else (loaded, None)                 # (N, 1, H, W), (N,) host
    K = NB_CLASSES if args.conditional else None
    sample_labels = None
    if args.conditional:
        per_class = -(-args.nb_generated // K)
        sample_labels = np.repeat(np.arange(K), per_class)          # one row of the grid per class
        args.nb_generated = len(sample_labels)
    model = convnet(x.shape[1], width=args.width, kernel_size=args.kernel_size, seed=args.seed, nb_classes=K)
    meta = {"data": args.data}
    # the CPU's BLAS threads: whichever count is faster now (two idle, one beside a busy program)
    run = train_and_sample(args, x, model, meta, x.shape[1:], blas_threads="auto", labels=labels,
                           sample_labels=sample_labels)
    if run is None:             # another rank of a distributed run: rank 0 writes the results
        return
    generated, trainer, frames = run

    if len(generated) >= 2:     # a Fréchet distance needs a covariance; the classifier trains once, then is cached
        print(quality.summary(quality.report(generated, args.data, labels=sample_labels, data_dir=args.data_dir)))
    if not args.no_bound:       # bits/dim on images no run trains on (digits: the last 297; MNIST: its test split)
        held_out = data.held_out(args.data, args.data_dir)
        null = backend.asarray(np.full(len(held_out), K)) if args.conditional else None      # "no label"
        likelihood.image_report(model, held_out, trainer.meta["mean"], trainer.meta["std"],
                                likelihood.IMAGE_LEVELS[args.data], trainer.schedule,
                                backend.default_rng(args.seed, 7_000_003),
                                nb_timesteps=args.bound_timesteps or None, labels=null)

    if args.conditional:
        np.save(os.path.join(args.out, "labels.npy"), sample_labels)
        real = np.concatenate([x[labels == k][:per_class] for k in range(K)])     # the same rows of classes
        plots.images(real, generated, os.path.join(args.out, "images.png"), columns=per_class)
    else:
        plots.images(x[:len(generated)], generated, os.path.join(args.out, "images.png"))
    if sweep:
        grids = [generated if s == args.guidance else sample_again(args, trainer, x.shape[1:], sample_labels, s)
                 for s in sweep]
        plots.guidance_grids(grids, sweep, per_class, os.path.join(args.out, "guidance.png"))
        for s, grid in zip(sweep, grids):
            np.save(os.path.join(args.out, f"samples_guidance_{s:g}.npy"), grid)
    if frames:
        plots.trajectory(frames, None, os.path.join(args.out, "trajectory.png"),
                         os.path.join(args.out, "trajectory.gif"), as_images=True)
    written = ["images.png"] + ["guidance.png", "samples_guidance_*.npy"] * bool(sweep) + ["samples.npy"]
    written += ["labels.npy"] * args.conditional
    written += ["checkpoint.npz", "loss.csv"] if trainer.losses else []          # none when only sampling
    print(f"wrote {args.out}/{', '.join(written)}")
    cli.show_window(not args.no_window)


if __name__ == "__main__":
    cli.run(main)
