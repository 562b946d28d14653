"""The training loop: epochs of Algorithm 1 over a shuffled data set, with Adam, the EMA of the
weights, a progress bar, a loss log and checkpoints that resume a run exactly."""

import dataclasses
import functools
import math
import os
import signal

from tqdm.auto import tqdm

from .. import backend, cpu
from ..errors import Error
from ..diffusion import draw_timesteps, loss_and_backward, train_step
from ..nn import checkpoint
from ..nn.optim import EMA, LR_SCHEDULES, Adam, ema_decay, learning_rate
from .distributed import SINGLE


class ConfigError(Error, ValueError):
    """A training setting out of its range."""


class TrainingStopped(RuntimeError):
    """Training stopped early (Ctrl-C or a non-finite loss); the message says what was kept."""


@dataclasses.dataclass
class TrainConfig:
    nb_epochs: int = 100
    batch_size: int = 25
    learning_rate: float = 1e-3
    ema_decay: float = 0.9999
    seed: int = 0
    reset_adam_each_epoch: bool = False   # the lecture's code re-creates Adam at every epoch
    lr_schedule: str = "constant"         # "constant", "cosine" or "linear" decay (optim.learning_rate)
    warmup_steps: int = 0                 # linear learning-rate warm-up from 0
    ema_warmup: bool = False              # EMA decay min(ema_decay, (1 + k) / (10 + k)) at step k
    log_every: int = 100                  # read the loss every that many steps (a device sync)
    blas_threads: int | str | None = None  # CPU BLAS threads while training: None the default, "auto" backend.BlasTuner
    cond_drop: float = 0.1                # conditional models: probability of "no label" (guidance)
    t_power: float = 1.0                  # time steps t = floor(T u^t_power): 1 uniform (diffusion.draw_timesteps)

    def check(self):
        if self.nb_epochs < 0:
            raise ConfigError(f"the number of epochs must be 0 or more, not {self.nb_epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"the batch size must be at least 1, not {self.batch_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"the learning rate must be positive, not {self.learning_rate}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"the EMA decay must be in [0, 1), not {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule {self.lr_schedule!r}; "
                              f"choose one of: {', '.join(LR_SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"the warm-up must be 0 steps or more, not {self.warmup_steps}")
        if not 0 <= self.cond_drop <= 1:
            raise ConfigError(f"the label drop probability must be in [0, 1], not {self.cond_drop}")
        if not (self.blas_threads in (None, "auto") or isinstance(self.blas_threads, int) and self.blas_threads >= 1):
            raise ConfigError(f"BLAS threads must be None, 'auto' or a count of 1 or more, not {self.blas_threads!r}")
        if not self.t_power > 0:
            raise ConfigError(f"the time-step power must be positive, not {self.t_power}")


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
        self.losses = []      # (step, mean loss since the previous entry)
        self._logged = 0      # how many of them the log file has

    # Checkpoints -------------------------------------------------------------------------

    def state(self):
        arrays = {"params": self.model.flat_params, "ema": self.ema.averages[0],
                  "adam_m": self.optimizer.m[0], "adam_v": self.optimizer.v[0]}
        meta = {**self.meta, "step": self.step, "adam_t": self.optimizer.t,
                "config": dataclasses.asdict(self.config)}
        return arrays, meta

    def save(self, path):
        arrays, meta = self.state()
        checkpoint.save(path, arrays, meta)

    def load(self, path):
        arrays, meta = checkpoint.load(path)
        if meta.get("model") != self.meta.get("model"):
            raise checkpoint.CheckpointError(
                f"{path} holds a different model ({meta.get('model')}), not {self.meta.get('model')}")
        if arrays["params"].shape != self.model.flat_params.shape:
            raise checkpoint.CheckpointError(f"{path} does not match this model's parameter count")
        # the step count maps to (epoch, batch) through the batch size and seed, to the
        # learning rate and EMA decay through their schedules (and, when it decays, the length),
        # and the generator's state to the draws of t through t_power
        settings = ["batch_size", "seed", "lr_schedule", "warmup_steps", "ema_warmup", "t_power"]
        if self.config.lr_schedule != "constant":
            settings.append("nb_epochs")
        for setting in settings:
            saved = meta["config"].get(setting, TrainConfig.__dataclass_fields__[setting].default)
            if saved != getattr(self.config, setting):
                raise checkpoint.CheckpointError(
                    f"{path} was trained with {setting.replace('_', ' ')} {saved}: resume with the same")
        self.model.flat_params[...] = backend.asarray(arrays["params"])
        self.ema.averages[0][...] = backend.asarray(arrays["ema"])
        self.optimizer.m[0][...] = backend.asarray(arrays["adam_m"])
        self.optimizer.v[0][...] = backend.asarray(arrays["adam_v"])
        self.optimizer.t = meta["adam_t"]
        self.step = meta["step"]
        return meta

    # Training ----------------------------------------------------------------------------

    def fit(self, x_train, checkpoint_path=None, log_path=None, progress=True, max_steps=None, labels=None):
        """Train on x_train (N, ...), a standardised backend array, up to config.nb_epochs
        epochs (or `max_steps` in all). Resumes from self.step: epoch k's shuffle and noise come
        from generators seeded by (seed, k), so a resumed run draws what an uninterrupted one
        would have. Ctrl-C saves a checkpoint and raises TrainingStopped. `labels` (N,), a backend
        integer array, gives the class of each row to a conditional model."""
        config, N = self.config, x_train.shape[0]
        steps_per_epoch = math.ceil(N / config.batch_size)
        total = config.nb_epochs * steps_per_epoch if max_steps is None else max_steps
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
                                     None if labels is None else labels[:n])
            arrays += [backend.xp.asarray(loss), self.model.flat_grads.copy()]
        return arrays

    def _run(self, x_train, labels, steps_per_epoch, total, bar, interrupted, checkpoint_path, log_path, timed):
        config, N = self.config, x_train.shape[0]
        running, count = 0.0, 0
        while self.step < total:
            epoch, offset = divmod(self.step, steps_per_epoch)
            order = backend.asarray(backend.host_rng(config.seed, epoch).permutation(N))
            rng = backend.default_rng(config.seed, epoch)
            if config.reset_adam_each_epoch and offset == 0:
                self.optimizer.reset()
            for _ in range(offset):            # resuming mid-epoch: replay the draws made
                _skip_draws(rng, x_train, config.batch_size, self.schedule, labels is not None, config.t_power)
            for k in range(offset, steps_per_epoch):
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
                        kept = f"the last good checkpoint is {checkpoint_path}" if checkpoint_path else "nothing was saved"
                        raise TrainingStopped(f"the loss became {mean_loss} at step {self.step}; {kept}")
                    self.losses.append((self.step, mean_loss))
                    bar.set_postfix(loss=f"{mean_loss:.4f}", epoch=epoch)
                if stop:
                    self._save_all(checkpoint_path, log_path)
                    where = f"saved to {checkpoint_path}" if checkpoint_path else "not saved (no path)"
                    raise TrainingStopped(f"interrupted at step {self.step}; checkpoint {where}")
                if self.step == total:
                    break
            self._save_all(checkpoint_path, log_path)

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


def _skip_draws(rng, x_train, batch_size, schedule, conditional=False, t_power=1.0):
    """The draws of one train_step: t, eps and, for a conditional model, the label drops."""
    draw_timesteps(rng, schedule.T, batch_size, t_power)
    rng.standard_normal((batch_size,) + x_train.shape[1:], dtype=x_train.dtype)
    if conditional:
        rng.random(batch_size)


def _catch_sigint(flag):
    """Turn Ctrl-C into a flag checked between steps, so no step is left half done."""
    try:
        return signal.signal(signal.SIGINT, lambda signum, frame: flag.append(signum))
    except ValueError:      # not the main thread: leave Ctrl-C alone
        return signal.getsignal(signal.SIGINT)
