"""The training loop: epochs of Algorithm 1 over a shuffled data set, with Adam, the EMA of the
weights, a progress bar, a loss log and checkpoints that resume a run exactly."""

import dataclasses
import functools
import math
import os
import signal
import time

from tqdm.auto import tqdm

from .. import backend, cpu, models
from ..diffusion import loss_and_backward, train_step
from ..errors import Error
from ..nn import checkpoint
from ..nn.optim import EMA, LR_SCHEDULES, Adam, ema_decay, learning_rate
from .distributed import SINGLE


class ConfigError(Error, ValueError):
    """A training setting out of its range; `setting` names it (the command line's flag)."""

    def __init__(self, setting, problem):
        super().__init__(f"{setting.replace('_', ' ')} {problem}")
        self.setting, self.problem = setting, problem


class TrainingStopped(RuntimeError):
    """Training stopped early (Ctrl-C or a non-finite loss); the message says what was kept."""

    exit_code = 130         # the command line's exit status: Ctrl-C's


class TrainingCollapsed(TrainingStopped):
    """The network has collapsed to a constant output (collapse_since); the checkpoint is kept."""

    exit_code = 1


COLLAPSE_BAND, COLLAPSE_STEPS = 0.05, 300   # the loss within 5% of Var(eps) = 1 for 300 steps: collapsed


def collapse_since(losses, warmup_steps):
    """The step since which training has collapsed, or None. `losses` are the logged (step, mean
    loss since the previous entry) pairs. A network whose output no longer depends on its input
    predicts eps by a constant, 0 at best, and its loss is E[eps^2] = 1: collapsed, once every
    logged loss after the warm-up has been within COLLAPSE_BAND of 1 for COLLAPSE_STEPS steps
    or more (the lecture's net at 28x28 with a learning rate of 3e-3 does that for good)."""
    start = None
    for index in range(len(losses) - 1, -1, -1):            # back from the newest entry, while in the band
        begins = losses[index - 1][0] if index else 0       # an entry's window begins at the previous one
        if begins < warmup_steps or abs(losses[index][1] - 1) > COLLAPSE_BAND:
            break
        start = begins
    if start is not None and losses[-1][0] - start >= COLLAPSE_STEPS:
        return start
    return None


def setting(default, help, flag=True, **options):
    """A TrainConfig field: its default and its help; with `flag`, the command line has it as
    --name-with-dashes (app/cli.py reads these fields, so each setting is declared once), or for
    a setting on by default as the flag `negative` that turns it off (--no-...)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, **options})


@dataclasses.dataclass
class TrainConfig:
    nb_epochs: int = setting(100, "passes over the training set")
    batch_size: int = setting(25, "examples per step")
    learning_rate: float = setting(1e-3, "Adam's learning rate (after the warm-up, before any decay)")
    ema_decay: float = setting(0.9999, "decay of the exponential moving average of the weights")
    seed: int = setting(0, "seed of the initialisation, the data, every draw of training and the sampling noise")
    reset_adam_each_epoch: bool = setting(False, "re-create Adam at every epoch, as the lecture's code does")
    lr_schedule: str = setting("constant", "learning rate after the warm-up: constant, or a cosine or linear "
                               "decay to 0", choices=LR_SCHEDULES)
    warmup_steps: int = setting(0, "linear learning-rate warm-up from 0, in steps")
    ema_warmup: bool = setting(False, "EMA decay min(--ema-decay, (1 + k) / (10 + k)) at step k: short runs "
                               "forget their initialisation")
    collapse_stop: bool = setting(True, "train on when the loss stays within 5%% of 1.0, the variance of eps, "
                                  "for 300 steps after the warm-up: a collapsed network, where by default the "
                                  "run stops, keeping its checkpoint (collapse_stop: %(default)s)",
                                  negative="--no-collapse-stop")
    t_power: float = setting(1.0, "training time steps t = floor(T u^P): 1 uniform (the lecture's), above 1 "
                             "small t more often (diffusion.draw_timesteps)")
    cond_drop: float = setting(0.1, "conditional models: probability of training on 'no label' instead of "
                               "the label (classifier-free guidance)")
    log_every: int = setting(100, "read the loss every that many steps (a device sync)", flag=False)
    blas_threads: int | str | None = setting(None, "CPU BLAS threads while training: None the default, "
                                             "'auto' cpu.BlasTuner, or a count", flag=False)

    @classmethod
    def flags(cls):
        """The fields the command line has as flags, in order."""
        return [field for field in dataclasses.fields(cls) if field.metadata["flag"]]

    @classmethod
    def from_flags(cls, args, **others):
        """The TrainConfig of parsed command-line flags `args` (and of `others`, not flags)."""
        return cls(**{field.name: getattr(args, field.name) for field in cls.flags()}, **others)

    def check(self):
        problems = [
            ("nb_epochs", self.nb_epochs >= 0, "must be at least 0"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("learning_rate", self.learning_rate > 0, "must be positive"),
            ("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1)"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"must be one of: {', '.join(LR_SCHEDULES)}"),
            ("warmup_steps", self.warmup_steps >= 0, "must be at least 0"),
            ("cond_drop", 0 <= self.cond_drop <= 1, "must be in [0, 1]"),
            ("t_power", self.t_power > 0, "must be positive"),
            ("log_every", self.log_every >= 1, "must be at least 1"),
            ("blas_threads", self.blas_threads in (None, "auto") or isinstance(self.blas_threads, int)
             and self.blas_threads >= 1, "must be None, 'auto' or a count of 1 or more"),
        ]
        for name, ok, rule in problems:
            if not ok:
                raise ConfigError(name, f"{rule}, not {getattr(self, name)!r}")


SAVE_EVERY = 5.0    # seconds since the last checkpoint after which an epoch's end writes one (fit)
DRAWS = "seed, step"       # what the generator of a step is seeded by (checkpoints before format 2: seed, epoch)
STEP_DRAWS = 3_000_017      # keeps the steps' generators apart from the other streams of a seed


def step_rng(seed, step):
    """The generator of the draws of step `step` (0, 1, ...): seeded by (seed, step), so a
    resumed run draws what an uninterrupted one would have, with no replay of earlier steps."""
    return backend.default_rng(seed, STEP_DRAWS, step)


class Trainer:
    """Holds the model, Adam, the EMA and the step count; `fit` runs the epochs.

    `meta` (a JSON-able dict: model and data description, mean and std) is stored in every
    checkpoint, and a checkpoint whose meta["model"] differs is refused at load.
    """

    def __init__(self, model, schedule, config, meta=None, comm=SINGLE):
        config.check()
        self.model, self.schedule, self.config = model, schedule, config
        self.meta = {"model": getattr(model, "description", None), **(meta or {})}
        self.comm = comm      # the ranks of a distributed run (rank 0 alone writes), SINGLE in one process
        self.optimizer = Adam(model.flat_parameters(), lr=config.learning_rate)
        self.ema = EMA(model.flat_parameters(), decay=config.ema_decay)
        self.step = 0
        self.resumable = True     # whether fit may continue self.step (a checkpoint's draws are this code's)
        self._collapse_told = False
        self.losses = []      # (step, mean loss since the previous entry)
        self._logged = 0      # how many of them the log file has

    # Checkpoints -------------------------------------------------------------------------

    def state(self):
        """(arrays, meta) of a checkpoint: the weights, the EMA and Adam's moments (one flat
        buffer each), and the step count, Adam's and the settings."""
        adam, ema = self.optimizer.state(), self.ema.state()
        (m,), (v,), (average,) = adam["m"], adam["v"], ema["averages"]      # one flat buffer each
        arrays = {"params": self.model.flat_params, "ema": average, "adam_m": m, "adam_v": v}
        meta = {**self.meta, "step": self.step, "adam_t": adam["t"], "config": dataclasses.asdict(self.config),
                "draws": DRAWS}
        return arrays, meta

    def save(self, path):
        arrays, meta = self.state()
        checkpoint.save(path, arrays, meta)

    def load(self, path):
        """Take the run saved at `path` back: weights, EMA, Adam and step count. Refused in one
        sentence if it holds another model, or was trained with settings that fix the draws or
        the schedules differently. A checkpoint whose steps drew otherwise (written before the
        draws of step k were seeded by (seed, k)) loads, and samples, but `fit` will not train
        it further."""
        arrays, meta = checkpoint.load(path)
        saved_model = meta.get("model")
        if meta["format"] == checkpoint.READABLE[0]:     # format 1 described it as "mlp(dim=2, hidden=256)"
            saved_model = models.parse_description(saved_model)
        if saved_model != self.meta.get("model"):
            raise checkpoint.CheckpointError(
                f"{path} holds a different model ({saved_model}), not {self.meta.get('model')}")
        if arrays["params"].shape != self.model.flat_params.shape:
            raise checkpoint.CheckpointError(f"{path} does not match this model's parameter count")
        # the step count maps to (epoch, batch) through the batch size and seed, to the
        # learning rate and EMA decay through their schedules (and, when it decays, the length),
        # and to the draws of t through t_power
        settings = ["batch_size", "seed", "lr_schedule", "warmup_steps", "ema_warmup", "t_power"]
        if self.config.lr_schedule != "constant":
            settings.append("nb_epochs")
        for name in settings:
            saved = meta["config"].get(name, TrainConfig.__dataclass_fields__[name].default)
            if saved != getattr(self.config, name):
                raise checkpoint.CheckpointError(
                    f"{path} was trained with {name.replace('_', ' ')} {saved}: resume with the same")
        self.model.flat_params[...] = backend.asarray(arrays["params"])
        self.ema.load_state({"averages": [arrays["ema"]]})
        self.optimizer.load_state({"t": meta["adam_t"], "m": [arrays["adam_m"]], "v": [arrays["adam_v"]]})
        self.step = meta["step"]
        self.resumable = meta.get("draws") == DRAWS
        self.meta["model"] = saved_model
        return meta

    # Training ----------------------------------------------------------------------------

    def fit(self, x_train, checkpoint_path=None, log_path=None, progress=True, max_steps=None, labels=None):
        """Train on x_train (N, ...), a standardised backend array, up to config.nb_epochs
        epochs (or `max_steps` in all). Resumes from self.step: epoch e's shuffle comes from a
        generator seeded by (seed, e) and step k's draws from one seeded by (seed, k) (step_rng),
        so a resumed run draws what an uninterrupted one would have. The checkpoint (and the
        loss log) is written at the end, and at the end of an epoch when SAVE_EVERY seconds have
        passed since the last (the toy recipe's 0.2 s epochs would spend 3% of training on it);
        Ctrl-C saves one and raises TrainingStopped. `labels` (N,), a backend integer array,
        gives the class of each row to a conditional model."""
        config, N = self.config, x_train.shape[0]
        steps_per_epoch = math.ceil(N / config.batch_size)
        total = config.nb_epochs * steps_per_epoch if max_steps is None else max_steps
        if self.step < total and not self.resumable:
            raise checkpoint.CheckpointError(
                "this checkpoint was written before the draws of a step were seeded by (seed, step): "
                "it samples (resume it with its finished length), but cannot train further exactly")
        if log_path and self.comm.rank == 0 and (self.step == 0 or not os.path.exists(log_path)):
            with open(log_path, "w") as file:      # a new run starts a new log; a resumed one appends
                file.write("step,loss\n")
        interrupted = []
        previous_handler = _catch_sigint(interrupted)
        bar = tqdm(total=total, initial=min(self.step, total), disable=not progress or self.comm.rank != 0,
                   desc="training", unit="step", dynamic_ncols=True)
        try:
            check = functools.partial(self._step_products, x_train, labels)      # run only for "auto"
            with cpu.blas_threads(self.config.blas_threads, check=check) as tuner:
                self._run(x_train, labels, steps_per_epoch, total, bar, interrupted, checkpoint_path, log_path,
                          tuner.step)
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous_handler)
        return self.losses

    def _step_products(self, x_train, labels):
        """The loss and gradients of Algorithm 1 on fixed draws, at each shape this run's steps
        have (a full batch, and an epoch's shorter last one): what the BLAS tuner compares on one
        thread and on the default before it may switch between them. Leaves junk gradients,
        which every step clears."""
        N, B = x_train.shape[0], self.config.batch_size
        sizes = {self.comm.part_size(min(B, N))} | ({self.comm.part_size(N % B)} if N % B else set())
        rng, arrays = backend.default_rng(0), []
        for n in sorted(sizes - {0}):
            t = rng.integers(0, self.schedule.T, size=n)
            eps = rng.standard_normal((n,) + x_train.shape[1:], dtype=x_train.dtype)
            loss = loss_and_backward(self.model, x_train[:n], t, eps, self.schedule,
                                     None if labels is None else labels[:n], rng=backend.default_rng(1, n))
            arrays += [backend.xp.asarray(loss), self.model.flat_grads.copy()]
        return arrays

    def _run(self, x_train, labels, steps_per_epoch, total, bar, interrupted, checkpoint_path, log_path, timed):
        config, N = self.config, x_train.shape[0]
        running, count = 0.0, 0
        saved = time.perf_counter()     # when the last checkpoint was written
        while self.step < total:
            epoch, offset = divmod(self.step, steps_per_epoch)
            order = backend.asarray(backend.host_rng(config.seed, epoch).permutation(N))
            if config.reset_adam_each_epoch and offset == 0:
                self.optimizer.reset()
            for k in range(offset, steps_per_epoch):
                rng = step_rng(config.seed, self.step)          # this step's draws: t, eps, label drops, dropout
                rows = order[k * config.batch_size:(k + 1) * config.batch_size]
                x0, y = x_train[rows], None if labels is None else labels[rows]
                self.optimizer.lr = learning_rate(self.step + 1, config.learning_rate, config.lr_schedule,
                                                  config.warmup_steps, config.nb_epochs * steps_per_epoch)
                self.ema.decay = ema_decay(self.step + 1, config.ema_decay, config.ema_warmup)
                with timed():                                   # the BLAS tuner's clock ("auto"), or nothing
                    loss = train_step(self.model, self.optimizer, x0, self.schedule, rng, self.ema,
                                      labels=y, cond_drop=config.cond_drop, comm=self.comm, t_power=config.t_power)
                running, count = running + loss, count + 1
                self.step += 1
                bar.update(1)
                stop = self.comm.any(interrupted)          # Ctrl-C on any rank stops every rank here
                if count == config.log_every or self.step == total or stop:
                    mean_loss = self.comm.sum(float(running)) / count     # one device sync; the ranks' shares
                    running, count = 0.0, 0
                    if not math.isfinite(mean_loss):
                        kept = (f"the last good checkpoint is {checkpoint_path}" if checkpoint_path
                                else "nothing was saved")
                        raise TrainingStopped(f"the loss became {mean_loss} at step {self.step}; {kept}")
                    self.losses.append((self.step, mean_loss))
                    bar.set_postfix(loss=f"{mean_loss:.4f}", epoch=epoch)
                    self._check_collapse(checkpoint_path, log_path)
                if stop:
                    self._save_all(checkpoint_path, log_path)
                    where = f"saved to {checkpoint_path}" if checkpoint_path else "not saved (no path)"
                    raise TrainingStopped(f"interrupted at step {self.step}; checkpoint {where}")
                if self.step == total:
                    break
            if self.step == total or time.perf_counter() - saved >= SAVE_EVERY:
                self._save_all(checkpoint_path, log_path)
                saved = time.perf_counter()

    def _check_collapse(self, checkpoint_path, log_path):
        """Say so in one line when training has collapsed (collapse_since), once; keep the
        checkpoint, and stop unless config.collapse_stop is off."""
        start = collapse_since(self.losses, self.config.warmup_steps)
        if start is None or self._collapse_told:
            return
        self._collapse_told = True
        message = (f"training has collapsed: the loss has stayed within {COLLAPSE_BAND:.0%} of 1.0, the variance "
                   f"of eps (a constant output), from step {start} to {self.step}; a lower learning rate may train")
        if not self.config.collapse_stop:
            if self.comm.rank == 0:
                tqdm.write(f"warning: {message} (--no-collapse-stop: going on)")
            return
        self._save_all(checkpoint_path, log_path)
        kept = f"checkpoint saved to {checkpoint_path}" if checkpoint_path else "nothing was saved (no path)"
        raise TrainingCollapsed(f"{message}; {kept}; --no-collapse-stop trains on regardless")

    def _save_all(self, checkpoint_path, log_path):
        if self.comm.rank != 0:
            return
        if checkpoint_path:
            self.save(checkpoint_path)
        if log_path:
            with open(log_path, "a") as file:
                file.writelines(f"{step},{loss:.6f}\n" for step, loss in self.losses[self._logged:])
            self._logged = len(self.losses)

    def finish(self):
        """Copy the EMA weights into the model, as the lecture does after training."""
        self.ema.copy_to_model()


def _catch_sigint(flag):
    """Turn Ctrl-C into a flag checked between steps, so no step is left half done."""
    try:
        return signal.signal(signal.SIGINT, lambda signum, frame: flag.append(signum))
    except ValueError:      # not the main thread: leave Ctrl-C alone
        return signal.getsignal(signal.SIGINT)
