"""The learning-rate, EMA and time-step schedules against their formulas, and in the training loop."""

import math

import numpy as np
import pytest

from numpy_ddpm import backend, data
from numpy_ddpm.app.train import ConfigError, TrainConfig, Trainer
from numpy_ddpm.diffusion import draw_timesteps
from numpy_ddpm.models import mlp
from numpy_ddpm.nn.checkpoint import CheckpointError
from numpy_ddpm.optim import ema_decay, learning_rate
from numpy_ddpm.schedule import Schedule

from conftest import to_np


def test_warmup_is_linear_from_zero():
    assert [learning_rate(s, 0.01, "cosine", 4, 100) for s in (1, 2, 4)] == pytest.approx([0.0025, 0.005, 0.01])


@pytest.mark.parametrize("schedule,formula", [
    ("constant", lambda p: 1.0),
    ("cosine", lambda p: (1 + math.cos(math.pi * p)) / 2),
    ("linear", lambda p: 1 - p),
])
def test_decay_after_warmup(schedule, formula):
    base, warmup, total = 2e-3, 10, 110
    for step in (11, 35, 60, 97, 110):
        p = (step - warmup) / (total - warmup)
        assert learning_rate(step, base, schedule, warmup, total) == pytest.approx(base * formula(p), abs=1e-15)
    if schedule != "constant":
        assert learning_rate(total, base, schedule, warmup, total) == pytest.approx(0, abs=1e-15)
        rates = [learning_rate(s, base, schedule, warmup, total) for s in range(warmup, total + 1)]
        assert all(a >= b for a, b in zip(rates, rates[1:]))     # decays monotonically


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="cosine"):
        learning_rate(5, 1e-3, "exponential", 0, 10)
    with pytest.raises(ConfigError, match="lr schedule must be one of"):
        TrainConfig(lr_schedule="step").check()


def test_ema_warmup_formula():
    assert ema_decay(7, 0.999) == 0.999
    for step in (1, 8, 80, 500, 5000):
        assert ema_decay(step, 0.999, warmup=True) == min(0.999, (1 + step) / (10 + step))
    assert ema_decay(8, 0.999, warmup=True) == 0.5 and ema_decay(10**6, 0.999, warmup=True) == 0.999


def test_trainer_applies_both_schedules_step_by_step():
    """Adam sees learning_rate(k) and the EMA ema_decay(k) at step k: replay both by hand."""
    x = backend.asarray(data.standardise(data.toy("moons", 60, seed=0))[0])
    config = TrainConfig(nb_epochs=2, batch_size=20, lr_schedule="cosine", warmup_steps=2,
                         ema_decay=0.99, ema_warmup=True)
    trainer = Trainer(mlp(2, hidden=8), Schedule(), config)
    seen = []
    step = trainer.optimizer.step

    def spy():
        seen.append((trainer.optimizer.lr, trainer.ema.decay))
        step()
    trainer.optimizer.step = spy
    trainer.fit(x, progress=False)
    expected = [(learning_rate(k, 1e-3, "cosine", 2, 6), ema_decay(k, 0.99, True)) for k in range(1, 7)]
    assert seen == expected


def test_uniform_time_steps_are_the_lectures_draws():
    t = to_np(draw_timesteps(backend.default_rng(5), 1000, 64))
    np.testing.assert_array_equal(t, to_np(backend.default_rng(5).integers(0, 1000, size=64)))


@pytest.mark.parametrize("power", [0.5, 2.0, 3.0])
def test_time_step_power_follows_its_distribution(power):
    """P(t < k) = (k / T)^(1 / power), within 5 binomial standard errors at each k."""
    T, n = 1000, 200_000
    t = to_np(draw_timesteps(backend.default_rng(0), T, n, power))
    assert t.dtype.kind == "i" and t.min() >= 0 and t.max() <= T - 1
    for k in (1, 10, 100, 250, 500, 900):
        p = (k / T) ** (1 / power)
        assert abs((t < k).mean() - p) < 5 * math.sqrt(p * (1 - p) / n), k
    with pytest.raises(ConfigError, match="t power must be positive"):
        TrainConfig(t_power=0).check()


@pytest.mark.parametrize("t_power", [1.0, 2.0])
def test_a_scheduled_run_resumes_exactly(tmp_path, t_power):
    x = backend.asarray(data.standardise(data.toy("spiral", 95, seed=3))[0])

    def make(t_power=t_power):
        config = TrainConfig(nb_epochs=3, batch_size=10, lr_schedule="linear", warmup_steps=5,
                             ema_decay=0.999, ema_warmup=True, t_power=t_power)
        return Trainer(mlp(2, hidden=16, seed=2), Schedule(), config, meta={"model": "m"})
    full = make()
    full.fit(x, progress=False)
    first = make()
    first.fit(x, checkpoint_path=str(tmp_path / "c.npz"), progress=False, max_steps=13)
    resumed = make()
    resumed.load(str(tmp_path / "c.npz"))
    resumed.fit(x, progress=False)
    np.testing.assert_array_equal(to_np(resumed.model.flat_params), to_np(full.model.flat_params))
    np.testing.assert_array_equal(to_np(resumed.ema.averages[0]), to_np(full.ema.averages[0]))
    with pytest.raises(CheckpointError, match="t power"):     # its draws would not be the run's
        make(t_power + 1).load(str(tmp_path / "c.npz"))


def test_recipe_sets_what_was_not_given_explicitly():
    from numpy_ddpm.app import cli
    parser = cli.common_parser("test", recipes={"fast": dict(batch_size=1024, learning_rate=3e-3, ema_warmup=True)})
    lecture = cli.parse(parser, [])
    assert (lecture.batch_size, lecture.learning_rate, lecture.ema_warmup) == (25, 1e-3, False)
    fast = cli.parse(parser, ["--recipe", "fast", "--learning-rate", "1e-3"])
    assert (fast.batch_size, fast.learning_rate, fast.ema_warmup) == (1024, 1e-3, True)
