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
from numpy_ddpm.models import check_unet, convnet, unet

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
# The lecture's net at 28x28: 3e-3 collapses it (its loss at 1.0, a constant output, from step 200
# on); 1e-3 reaches 0.054 by step 700, then diverged (0.67 from step 900, an 8-epoch run); 5e-4
# trained smoothly through 2,880 steps (0.044). Five epochs of the 9,000 MNIST digits at batch 25.
FAST_MNIST_LECTURE = dict(FAST, learning_rate=5e-4, nb_epochs=5)
# The U-Net (models/unet.py, base 32, 1.1 M weights): Adam at 1e-3 after 200 warm-up steps, a
# cosine decay, batch 32, the EMA warmed up, DDIM 100 steps at eta 1. Five epochs of the 9,000
# digits (1,410 steps) trained in 27.5 min on the 2-core AVX2 EPYC (OpenBLAS Haswell kernels,
# 1.17 s a step), inside the 30 minutes of the U-Net issue; a sixth epoch would have passed them.
# Class-conditional, sampled with guidance 1.5: in the same training time the unconditional U-Net's
# digits were clear to our classifier (largest probability at least 0.9) in 63% of 1,000 samples,
# the conditional one's in 91% of 100 at guidance 1, 96% at 2 and 100% at 3 (FD over floor, 100
# against 100: 1.28, 2.09, 3.46; at 3 the strokes thicken and the digits of a class look alike);
# on the same 500 draws, 95.4% at guidance 1.5 and 98.6% at 2, FD over floor 2.22 and 4.05.
# Guidance doubles the sampling cost. --no-conditional: the unconditional U-Net. Against the
# lecture's net at equal time: benchmarks/README.md.
FAST_UNET = dict(batch_size=32, learning_rate=1e-3, lr_schedule="cosine", warmup_steps=200, ema_warmup=True,
                 nb_epochs=5, sampler="ddim", sampling_steps=100, eta=1.0, conditional=True, guidance=1.5)


def fast(args):
    """per data set and model (demos/mnist.py): the lecture's net on digits --batch-size 25
    --learning-rate 3e-3 --lr-schedule cosine --warmup-steps 200 --ema-warmup --nb-epochs 40
    --sampler ddim --sampling-steps 50 --eta 1; on 28x28 images the same at 5e-4 for 5 epochs;
    the U-Net batch 32, 1e-3, cosine, 200 warm-up steps, 5 epochs, class-conditional, DDIM 100 at
    guidance 1.5 (MNIST: 27.5 min of training on two AVX2 cores)"""
    if args.model == "unet":
        if "conditional" in args.given and not args.conditional:       # --no-conditional: no guidance either
            return {k: v for k, v in FAST_UNET.items() if k not in ("conditional", "guidance")}
        return FAST_UNET
    return FAST if args.data == "digits" else FAST_MNIST_LECTURE


IMAGE_SIZE = {"digits": 8, "mnist": 28, "fashion_mnist": 28}


def unet_kwargs(args):
    """The U-Net's settings from the flags, checked before anything is written (one sentence if wrong)."""
    try:
        multipliers = [int(m) for m in args.multipliers.split(",")]
        size = IMAGE_SIZE[args.data]
        if args.attention is None:
            attention = [size >> (len(multipliers) - 1)]           # the lowest level's resolution
        else:
            attention = [int(r) for r in args.attention.split(",") if r.strip()]
    except ValueError:
        raise cli.UserError("--multipliers and --attention take integers separated by commas") from None
    settings = dict(base=args.base, multipliers=multipliers, nb_blocks=args.nb_blocks, attention=attention,
                    dropout=args.dropout, groups=args.groups, image_size=size)
    check_unet(**settings)                          # UNetError: one line, exit 2
    return settings


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


def build_parser():
    """The demo's flags (cli.common_parser's, and the data's and models')."""
    # CPU-sized defaults: the first 1500 digits (the last 297 are held out for the bound and the
    # quality measure) for 150 epochs (9,000 steps); with so few steps the lecture's EMA decay of
    # 0.9999 would still weigh the initial weights at 41%, hence 0.999
    parser = cli.common_parser(__doc__.splitlines()[0], out="runs/mnist", nb_epochs=150,
                               nb_samples=1500, nb_generated=64, ema_decay=0.999, recipes={"fast": fast})
    parser.add_argument("--data", default="digits", help=f"one of: {', '.join(data.IMAGES)}")
    parser.add_argument("--data-dir", help="directory with the IDX files (MNIST, Fashion-MNIST)")
    parser.add_argument("--model", choices=["lecture", "unet"], default="lecture",
                        help="lecture: the lecture's conv net; unet: the U-Net of Ho et al. (2020)")
    lecture = parser.add_argument_group("--model lecture")
    lecture.add_argument("--width", type=int, default=64, help="channels of the hidden convolutions")
    lecture.add_argument("--kernel-size", type=int, default=5)
    unet_flags = parser.add_argument_group("--model unet (numpy_ddpm/models/unet.py)")
    unet_flags.add_argument("--base", type=int, default=32, help="channels at the first level")
    unet_flags.add_argument("--multipliers", default="1,2,2", help="channels of each level, times --base")
    unet_flags.add_argument("--nb-blocks", type=int, default=1, help="residual blocks a level")
    unet_flags.add_argument("--attention", default=None,
                            help="resolutions with self-attention, e.g. 7 or 14,7 ('': none; default the lowest "
                                 "level's: 7 at 28x28)")
    unet_flags.add_argument("--dropout", type=float, default=0.1)
    unet_flags.add_argument("--groups", type=int, default=8, help="GroupNorm's groups")
    parser.add_argument("--guidance-sweep", metavar="S1,S2,...",
                        help="with --conditional: also draw the grid at each of these guidance scales")
    parser.add_argument("--no-bound", action="store_true", help="skip the bits/dim bound on held-out images")
    parser.add_argument("--bound-timesteps", type=int, default=50,
                        help="sampled t per held-out image for the bound (an unbiased estimate; 0: all T)")
    return parser


def main():
    args = cli.parse(build_parser())
    data.require(args.data, data.IMAGES, "image data set")
    if args.width < 1 or args.kernel_size < 1 or args.kernel_size % 2 == 0:
        raise cli.UserError("--width must be positive and --kernel-size a positive odd number")
    unet_settings = unet_kwargs(args) if args.model == "unet" else None
    sweep = guidance_values(args)
    test_only = args.data != "digits" and data.test_split_only(args.data, args.data_dir)
    if test_only and "nb_samples" not in args.given:
        args.nb_samples = data.TEST_ONLY_TRAIN
    cli.check_common(args)

    if test_only:
        print(f"{args.data_dir} holds only the test split of {args.data}: training on its first "
              f"{min(args.nb_samples, data.TEST_ONLY_TRAIN):,} images, holding out its last 1,000")
    loaded = data.images(args.data, args.nb_samples, data_dir=args.data_dir, labels=args.conditional)
    x, labels = loaded if args.conditional else (loaded, None)                 # (N, 1, H, W), (N,) host
    K = NB_CLASSES if args.conditional else None
    sample_labels = None
    if args.conditional:
        per_class = -(-args.nb_generated // K)
        sample_labels = np.repeat(np.arange(K), per_class)          # one row of the grid per class
        args.nb_generated = len(sample_labels)
    if args.model == "unet":
        model = unet(x.shape[1], **unet_settings, nb_classes=K, seed=args.seed)
    else:
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
