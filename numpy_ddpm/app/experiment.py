"""One run of a demo: train (or resume), copy the EMA in, sample, and write the results."""

import math
import os
import sys
import time

from tqdm.auto import tqdm

from .. import backend, cpu
from ..data import standardise
from ..diffusion import Schedule, ddim_generate, dpm_solver_generate, generate, guided_eps
from ..evaluation import plots
from ..nn import evaluating
from ..nn.checkpoint import CheckpointError
from . import distributed
from .train import TrainConfig, Trainer

TRAJECTORY_EVERY = 5      # record x_t every that many steps for the GIF (and at the strip's times)


def train_and_sample(args, x_host, model, meta, sample_shape, blas_threads=None, labels=None,
                     sample_labels=None):
    """Train `model` on the host data x_host (N, ...) as args say, then draw args.nb_generated
    samples (with the sampler of --sampler). A conditional model trains on the host `labels`
    (N,) and draws sample i of class sample_labels[i] with guidance args.guidance; a resumed run
    that is already finished only samples. Returns (generated, trainer, frames) as host arrays
    in the data's own scale;
    frames is [(t, x_t)] when args.trajectory, else []. Under --distributed (args.comm), the
    ranks train together, each draws its share of the samples (its noise seeded by its rank),
    and rank 0 gathers them, writes and returns; the other ranks return None after the gather.
    `blas_threads` is training's (TrainConfig); "auto" lets backend.BlasTuner choose the CPU's
    BLAS threads while sampling too."""
    np = backend.np
    comm = getattr(args, "comm", distributed.SINGLE)
    x_standardised, mean, std = standardise(x_host)
    meta = {**meta, "mean": mean, "std": std}
    schedule = Schedule()           # the sampling flags were checked against it by cli.check_common
    config = train_config(args, blas_threads)
    steps = args.nb_epochs * math.ceil(len(x_host) / args.batch_size)
    # warn when the initial weights keep more than exp(-3) = 5% of the EMA
    if comm.rank == 0 and not args.ema_warmup and steps * (1 - args.ema_decay) < 3:
        print(f"warning: an EMA decay of {args.ema_decay} averages over about {1 / (1 - args.ema_decay):.0f} "
              f"steps, and this run has {steps}: the samples will come from weights still close to "
              f"their initialisation; lower --ema-decay or train longer", file=sys.stderr)
    trainer = Trainer(model, schedule, config, meta, comm=comm)
    if args.resume:
        saved = trainer.load(args.resume)
        if (saved["mean"], saved["std"]) != (mean, std):
            raise CheckpointError(f"{args.resume} was trained on other data (mean {saved['mean']:.4g}, "
                                  f"std {saved['std']:.4g}); pass the same --data, --nb-samples and --seed")
    x_train = backend.asarray(x_standardised, dtype=backend.dtype)             # uploaded once
    start = time.perf_counter()
    trainer.fit(x_train, checkpoint_path=os.path.join(args.out, "checkpoint.npz"),
                log_path=os.path.join(args.out, "loss.csv"), progress=not args.no_progress,
                labels=None if labels is None else backend.asarray(labels))
    trainer.finish()
    trained = time.perf_counter()

    frames = []

    def record(t, x):
        if args.sampler != "ddpm" or t % TRAJECTORY_EVERY == 0 or t in plots.TRAJECTORY_TIMES:
            frames.append((t, backend.to_numpy(x) * std + mean))

    def progress(steps):            # a bar, and with blas_threads="auto" the BLAS tuner's clock, over the steps
        if not args.no_progress and comm.rank == 0:
            steps = tqdm(steps, desc="sampling", unit="step", dynamic_ncols=True)
        return tuner.steps(steps)

    rng = backend.default_rng(args.seed, 1_000_003, *comm.sampling_keys())
    mine = None if sample_labels is None else sample_labels[comm.part(args.nb_generated)]
    shape = (comm.part_size(args.nb_generated),) + sample_shape

    def products():                 # one step's eps on fixed x: the BLAS tuner's bitwise check
        with evaluating(model):
            x = backend.default_rng(0).standard_normal(shape, dtype=backend.dtype)
            return [guided_eps(model, x, schedule.network_time(schedule.T - 1), mine, args.guidance)]

    with cpu.blas_threads("auto" if blas_threads == "auto" else None, probe=5, every=100,
                              check=products) as tuner:
        x = draw(args, model, schedule, shape, rng, mine, args.guidance, progress=progress,
                 callback=record if args.trajectory else None)
    generated = comm.gather_rows(backend.to_numpy(x))                          # one transfer back
    frames = [(t, comm.gather_rows(x_t)) for t, x_t in frames]
    if not comm.done():                             # ranks but 0: their part is over
        return None
    generated = generated * std + mean
    print(f"trained in {trained - start:.1f} s, sampled in {time.perf_counter() - trained:.1f} s")
    np.save(os.path.join(args.out, "samples.npy"), generated)
    if trainer.losses:
        plots.loss_curve(trainer.losses, os.path.join(args.out, "loss.png"))
    return generated, trainer, frames


def train_config(args, blas_threads=None):
    """The TrainConfig of the demo flags `args`."""
    return TrainConfig.from_flags(args, blas_threads=blas_threads)


def draw(args, model, schedule, shape, rng, labels=None, guidance=1.0, progress=None, callback=None):
    """Samples of `shape` in the standardised space, by Algorithm 2, DDIM or DPM-Solver++ as args say."""
    if args.sampler == "dpm++":
        return dpm_solver_generate(model, shape, schedule, rng, nb_steps=args.sampling_steps or 20,
                                   order=args.order or 2, spacing=args.spacing, progress=progress,
                                   callback=callback, labels=labels, guidance=guidance)
    if args.sampler == "ddim":
        return ddim_generate(model, shape, schedule, rng, nb_steps=args.sampling_steps or 50, eta=args.eta,
                             spacing=args.spacing, progress=progress, callback=callback,
                             labels=labels, guidance=guidance)
    return generate(model, shape, schedule, rng, progress=progress, callback=callback,
                    labels=labels, guidance=guidance)


def sample_again(args, trainer, sample_shape, labels, guidance):
    """Draw len(labels) more samples from the trained model, from the same noise seed as
    train_and_sample (so that x_T is the same), with another guidance scale; host, data scale."""
    rng = backend.default_rng(args.seed, 1_000_003)
    x = draw(args, trainer.model, trainer.schedule, (len(labels),) + sample_shape, rng, labels, guidance)
    return backend.to_numpy(x) * trainer.meta["std"] + trainer.meta["mean"]
