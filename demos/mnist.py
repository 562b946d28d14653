"""Train the lecture's conv net as a denoising diffusion model on digit images.

    python demos/mnist.py                                  # 8x8 digits, offline, a few CPU minutes
    python demos/mnist.py --data mnist --nb-samples 25000 --nb-epochs 100 --backend cupy
                                                           # the lecture's configuration (a GPU job)

Writes into --out: images.png (training images on top, generated ones below), samples.npy,
checkpoint.npz, loss.csv, loss.png, and with --trajectory trajectory.png and trajectory.gif.
MNIST and Fashion-MNIST are read from --data-dir, or downloaded once into ~/.cache/numpy-ddpm.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numpy_ddpm import cli, data, plots  # noqa: E402
from numpy_ddpm.experiment import train_and_sample  # noqa: E402
from numpy_ddpm.models import convnet  # noqa: E402


def main():
    # CPU-sized defaults: the 1797 digits for 150 epochs (10,800 steps); with so few steps the
    # lecture's EMA decay of 0.9999 would still weigh the initial weights at 34%, hence 0.999
    parser = cli.common_parser(__doc__.splitlines()[0], out="runs/mnist", nb_epochs=150,
                               nb_samples=1797, nb_generated=64, ema_decay=0.999)
    parser.add_argument("--data", default="digits", help=f"one of: {', '.join(data.IMAGES)}")
    parser.add_argument("--data-dir", help="directory with the IDX files (MNIST, Fashion-MNIST)")
    parser.add_argument("--width", type=int, default=64, help="channels of the hidden convolutions")
    parser.add_argument("--kernel-size", type=int, default=5)
    args = parser.parse_args()
    data.require(args.data, data.IMAGES, "image data set")
    if args.width < 1 or args.kernel_size < 1 or args.kernel_size % 2 == 0:
        raise cli.UserError("--width must be positive and --kernel-size a positive odd number")
    cli.check_common(args)

    x = data.images(args.data, args.nb_samples, data_dir=args.data_dir)           # (N, 1, H, W) host
    model = convnet(x.shape[1], width=args.width, kernel_size=args.kernel_size, seed=args.seed)
    meta = {"model": f"convnet(channels={x.shape[1]}, width={args.width}, kernel_size={args.kernel_size})",
            "data": args.data}
    generated, trainer, frames = train_and_sample(args, x, model, meta, x.shape[1:])

    plots.images(x[:len(generated)], generated, os.path.join(args.out, "images.png"))
    if frames:
        plots.trajectory(frames, None, os.path.join(args.out, "trajectory.png"),
                         os.path.join(args.out, "trajectory.gif"), as_images=True)
    print(f"wrote {args.out}/images.png, samples.npy, checkpoint.npz, loss.csv")
    cli.show_window(not args.no_window)


if __name__ == "__main__":
    cli.run(main)
