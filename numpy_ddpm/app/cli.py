"""What the demos share: the common flags, the backend switch, and one-sentence errors."""

import argparse
import os
import sys

from .. import backend
from ..diffusion.schedule import Schedule
from ..errors import Error
from . import distributed
from .train import ConfigError, TrainConfig, TrainingStopped


class UserError(Error):
    """Something the user asked for cannot be done; its message is one sentence."""


def common_parser(description, recipes=None, **defaults):
    """The flags every demo has; `defaults` override the lecture's values. `recipes` maps a
    name to flag values that `--recipe NAME` sets (flags given explicitly still win), or to a
    function of the parsed flags that returns them (a recipe per data set and model)."""
    d = dict(nb_samples=25000, nb_generated=1000, out="runs/demo")
    d.update(defaults)
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--device", type=int, default=None,
                        help="CUDA device number (cupy; default $NUMPY_DDPM_DEVICE or 0)")
    parser.add_argument("--tf32", action="store_true",
                        help="let the GPU's float32 matrix products use TensorFloat-32 (cupy; off by default)")
    parser.add_argument("--no-fused", action="store_true",
                        help="run the plain reference code on the GPU, without the fused kernels")
    parser.add_argument("--nb-samples", type=int, default=d["nb_samples"], help="size of the training set")
    training = parser.add_argument_group("training (app/train.py's TrainConfig)")
    for field in TrainConfig.flags():         # each training setting is declared once, in TrainConfig
        name, default = field.name, d.get(field.name, field.default)
        flag, options = "--" + name.replace("_", "-"), {"help": field.metadata["help"]}
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        if "negative" in field.metadata:
            training.add_argument(field.metadata["negative"], dest=name, action="store_false", **options)
        elif field.type in (bool, "bool"):
            training.add_argument(flag, action="store_true", **options)
        else:
            training.add_argument(flag, type=type(default), default=default, **options)
    recipes = recipes or {}
    parser.add_argument("--recipe", choices=["lecture"] + list(recipes), default="lecture",
                        help="lecture: the lecture's settings; " + "; ".join(
                            f"{name}: {_recipe_help(recipe)}" for name, recipe in recipes.items()))
    parser.set_defaults(recipes=recipes)
    parser.add_argument("--nb-generated", type=int, default=d["nb_generated"])
    parser.add_argument("--out", default=d["out"], help="directory for the plot, samples, checkpoint and log")
    parser.add_argument("--resume", metavar="CHECKPOINT", help="continue the run saved in CHECKPOINT")
    parser.add_argument("--trajectory", action="store_true",
                        help="also save the reverse process as a strip (t = 1000, 875, ..., 0) and a GIF")
    parser.add_argument("--no-window", action="store_true", help="only write files, open no window")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sampling = parser.add_argument_group("sampling (also with --resume of a finished run, which then only samples)")
    sampling.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++"], default="ddpm",
                          help="ddpm: Algorithm 2, all T steps (the lecture's); ddim: Song et al.'s eq. 12; "
                               "dpm++: DPM-Solver++, Lu et al.'s multistep ODE solver")
    sampling.add_argument("--sampling-steps", type=int, default=None,
                          help="DDIM or DPM-Solver++ steps, 1 to T (default 50 for ddim, 20 for dpm++); "
                               "DDPM always takes T")
    sampling.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    sampling.add_argument("--order", type=int, default=None,
                          help="DPM-Solver++ order: 1 (DDIM at eta 0), 2 (2M, when not given) or 3 (3M)")
    sampling.add_argument("--spacing", choices=["trailing", "leading", "linspace"], default="trailing",
                          help="DDIM and DPM-Solver++ step indices, diffusers' rules (linspace: dpm++)")
    guidance = parser.add_argument_group("classifier-free guidance (Ho & Salimans 2022)")
    guidance.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=False,
                          help="train a class-conditional model (on a data set with classes); "
                               "--no-conditional: an unconditional one where a recipe sets --conditional")
    guidance.add_argument("--guidance", type=float, default=1.0,
                          help="guidance scale s: 0 unconditional, 1 conditional, more: further from the other classes")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel training over the ranks of mpiexec -n P (numpy_ddpm/app/distributed.py)")
    return parser


def _recipe_help(recipe):
    """A recipe's flags, or the docstring of a recipe that depends on the run (a function of args)."""
    if callable(recipe):
        return " ".join(recipe.__doc__.split())
    return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in recipe.items())


def parse(parser, argv=None):
    """Parse the flags, then apply --recipe to the flags not given explicitly. `args.given` lists
    the flags given explicitly (by their dest names): a recipe's --eta, say, is no user error."""
    args = parser.parse_args(argv)
    unset = object()
    given = parser.parse_args(argv, argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    args.given = tuple(sorted(a.dest for a in parser._actions if getattr(given, a.dest) is not unset))
    if args.recipe != "lecture":
        recipe = args.recipes[args.recipe]
        for key, value in (recipe(args) if callable(recipe) else recipe).items():
            if key not in args.given:
                setattr(args, key, value)
    return args


def check_common(args):
    for flag in ("nb_samples", "nb_generated"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, not {getattr(args, flag)}")
    try:
        TrainConfig.from_flags(args).check()
    except ConfigError as error:
        raise UserError(f"--{error.setting.replace('_', '-')} {error.problem}") from None
    args.comm = distributed.connect(vars(args)) if args.distributed else distributed.SINGLE
    if args.distributed and args.backend == "cupy" and args.device is None:
        args.device = distributed.cuda_device(args.comm.rank)        # rank r: device r modulo the visible ones
    backend.use(args.backend, args.device, tf32=args.tf32)
    backend.use_fused = not args.no_fused
    check_sampling(args, Schedule().T)      # the demos' schedule; before --out: a wrong flag writes nothing
    os.makedirs(args.out, exist_ok=True)


def check_sampling(args, T):
    """The sampling and guidance flags against the schedule's T steps; a sentence if wrong."""
    given = getattr(args, "given", ())          # flags given explicitly (parse), not by a recipe
    if args.sampling_steps is not None and args.sampler == "ddpm" and args.sampling_steps != T:
        raise UserError(f"--sampling-steps is for --sampler ddim or dpm++: DDPM takes all {T} steps")
    if args.sampling_steps is not None and not 1 <= args.sampling_steps <= T:
        raise UserError(f"--sampling-steps must be between 1 and {T}, not {args.sampling_steps}")
    if not 0 <= args.eta <= 1:
        raise UserError(f"--eta must be in [0, 1], not {args.eta}")
    if args.sampler == "dpm++" and "eta" in given:
        raise UserError("--eta is for --sampler ddim: DPM-Solver++ is deterministic")
    if args.order is not None and args.sampler != "dpm++" and "order" in given:
        raise UserError("--order is for --sampler dpm++")
    if args.order is not None and not 1 <= args.order <= 3:
        raise UserError(f"--order must be 1, 2 or 3, not {args.order}")
    if args.spacing == "linspace" and args.sampler == "ddim":
        raise UserError("--spacing linspace is for --sampler dpm++: DDIM's are leading and trailing")
    if args.sampler == "dpm++" and args.spacing != "trailing" and args.sampling_steps == T:
        raise UserError(f"--spacing {args.spacing} fits at most {T - 1} DPM-Solver++ steps, not {T}: "
                        "take fewer or --spacing trailing")
    if not args.guidance >= 0:
        raise UserError(f"--guidance must be 0 or more, not {args.guidance}")
    if not args.conditional and (args.guidance != 1 or getattr(args, "label", None) is not None):
        raise UserError("--guidance and --label need --conditional (a class-conditional model)")


def run(main):
    """Call main(); an error of the library (errors.Error: a bad flag, a missing file, a backend
    this machine lacks) becomes one line on stderr and exit status 2."""
    try:
        main()
    except Error as error:
        distributed.end(f"error: {error}", 2)        # one process: print and exit
    except OSError as error:          # an unwritable --out, a full disk
        distributed.end(f"error: {error}", 2)
    except TrainingStopped as error:
        distributed.end(f"stopped: {error}", error.exit_code)
    except KeyboardInterrupt:         # outside training (sampling, plotting): the checkpoint is complete
        distributed.end("stopped: interrupted after training; --resume with the checkpoint in --out samples again", 130)
    except Exception:                 # a bug: its traceback (under MPI, then every rank is aborted)
        distributed.end_on_bug()


def show_window(enabled):
    """Open the figures in a window when asked and a display can show them."""
    import matplotlib
    import matplotlib.pyplot as plt
    interactive = matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template")
    if enabled and interactive and (os.environ.get("DISPLAY") or sys.platform in ("darwin", "win32")):
        plt.show()
