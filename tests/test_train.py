"""Training end to end: a short run learns, checkpoints resume exactly, the demo runs."""

import os
import subprocess
import sys

import numpy as np
import pytest

from numpy_ddpm import backend, data
from numpy_ddpm.app.train import ConfigError, TrainConfig, Trainer, TrainingStopped
from numpy_ddpm.diffusion import generate
from numpy_ddpm.evaluation import metrics
from numpy_ddpm.models import mlp
from numpy_ddpm.nn import checkpoint
from numpy_ddpm.nn.checkpoint import CheckpointError
from numpy_ddpm.schedule import Schedule

from conftest import to_np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def distance_after(trainer, x_host, name, mean, std):
    x = generate(trainer.model, (2000, 2), trainer.schedule, backend.default_rng(7))
    return metrics.distance_to_data(to_np(x) * std + mean, name)


def test_short_training_run_learns_the_distribution():
    x_host, mean, std = data.standardise(data.toy("two_discs", 8000, seed=1))
    x = backend.asarray(x_host)
    config = TrainConfig(nb_epochs=12, batch_size=32, ema_decay=0.99, seed=1)
    trainer = Trainer(mlp(2, hidden=128, seed=1), Schedule(), config)
    before, floor = distance_after(trainer, x_host, "two_discs", mean, std)
    trainer.fit(x, progress=False)
    trainer.finish()
    after, _ = distance_after(trainer, x_host, "two_discs", mean, std)
    assert after < 0.1 * before and after < 4 * floor, (before, after, floor)
    losses = [loss for _, loss in trainer.losses]
    assert losses[-1] < 0.8 * losses[0]


def make_trainer(seed=2):
    config = TrainConfig(nb_epochs=3, batch_size=10, seed=seed, log_every=7)
    return Trainer(mlp(2, hidden=16, seed=seed), Schedule(), config, meta={"model": "mlp16"})


def test_resume_gives_the_same_state_as_an_uninterrupted_run(tmp_path):
    x = backend.asarray(data.standardise(data.toy("spiral", 95, seed=3))[0])   # 10 steps an epoch
    full = make_trainer()
    full.fit(x, progress=False)

    first = make_trainer()
    first.fit(x, checkpoint_path=str(tmp_path / "c.npz"), progress=False, max_steps=13)  # mid-epoch
    resumed = make_trainer()
    resumed.load(str(tmp_path / "c.npz"))
    assert resumed.step == 13
    resumed.fit(x, progress=False)
    assert resumed.step == full.step == 30
    np.testing.assert_array_equal(to_np(resumed.model.flat_params), to_np(full.model.flat_params))
    np.testing.assert_array_equal(to_np(resumed.ema.averages[0]), to_np(full.ema.averages[0]))
    np.testing.assert_array_equal(to_np(resumed.optimizer.v[0]), to_np(full.optimizer.v[0]))
    assert resumed.optimizer.t == full.optimizer.t


@pytest.mark.parametrize("every,saved_at", [(0.0, [10, 20, 30]), (1e9, [30])])
def test_checkpoints_at_epoch_ends_at_most_every_save_every_seconds(tmp_path, monkeypatch, every, saved_at):
    """An epoch's end writes the checkpoint once SAVE_EVERY seconds have passed since the last
    (so short epochs do not spend their time saving); the end of training always does."""
    from numpy_ddpm.app import train
    monkeypatch.setattr(train, "SAVE_EVERY", every)
    saves = []
    monkeypatch.setattr(Trainer, "save", lambda self, path: saves.append(self.step))
    x = backend.asarray(data.standardise(data.toy("spiral", 95, seed=3))[0])   # 10 steps an epoch
    make_trainer().fit(x, checkpoint_path=str(tmp_path / "c.npz"), progress=False)
    assert saves == saved_at


def trained_with_checkpoint(tmp_path, nb_samples, steps):
    """(trainer, data, checkpoint path) after `steps` steps on the spiral."""
    x = backend.asarray(data.standardise(data.toy("spiral", nb_samples, seed=3))[0])
    trainer = make_trainer()
    path = str(tmp_path / "c.npz")
    trainer.fit(x, checkpoint_path=path, progress=False, max_steps=steps)
    return trainer, x, path


def test_bad_checkpoints_are_clear_errors(tmp_path):
    _, _, path = trained_with_checkpoint(tmp_path, 40, 4)
    blob = open(path, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        make_trainer().load(str(truncated))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(CheckpointError):
        make_trainer().load(str(foreign))
    other = Trainer(mlp(2, hidden=8), Schedule(), TrainConfig(), meta={"model": "mlp8"})
    with pytest.raises(CheckpointError, match="different model"):
        other.load(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        make_trainer().load(str(tmp_path / "missing.npz"))
    with pytest.raises(CheckpointError, match="trained with seed 2"):
        make_trainer(seed=3).load(path)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    trainer, x, path = trained_with_checkpoint(tmp_path, 100, 10)
    good = open(path, "rb").read()
    trainer.model.flat_params[0] = np.nan
    with pytest.raises(TrainingStopped, match="last good checkpoint"):
        trainer.fit(x, checkpoint_path=path, progress=False)
    assert open(path, "rb").read() == good


def test_bad_settings():
    with pytest.raises(ConfigError, match="batch size"):
        TrainConfig(batch_size=0).check()
    with pytest.raises(data.DataError, match="choose one of: gaussian_mixture, ramp"):
        data.toy("nope", 10)


@pytest.mark.parametrize("name", sorted(data.TOY))
def test_toy_sets(name):
    x = data.toy(name, 500, seed=0)
    assert x.dtype == np.float32 and x.shape == (500, 1 if name in ("gaussian_mixture", "ramp") else 2)
    np.testing.assert_array_equal(x, data.toy(name, 500, seed=0))
    assert not np.array_equal(x, data.toy(name, 500, seed=1))
    d, floor = metrics.distance_to_data(x, name)
    assert d < 3 * floor                 # a draw of the data is as close as another draw


def test_energy_distance():
    a, b = data.toy("two_discs", 800, seed=1), data.toy("two_discs", 800, seed=2)
    same = metrics.energy_distance(a, b)
    assert abs(same) < 0.01
    assert metrics.energy_distance(a, b + np.float32(0.5)) > 20 * abs(same)
    x, y = np.array([[0.0], [2.0]]), np.array([[1.0]])        # 2*1 - 1 - 0, by hand
    assert metrics.energy_distance(x, y) == pytest.approx(1.0)


def test_mean_distance_in_blocks_matches_all_pairs():
    rng = np.random.default_rng(3)
    u, v = rng.normal(size=(70, 2)) * 5, rng.normal(size=(45, 2)) + 3
    direct = np.sqrt(((u[:, None, :] - v[None, :, :]) ** 2).sum(axis=-1)).mean()
    assert metrics.mean_distance(u, v, rows=16) == pytest.approx(direct, rel=1e-12)
    within = np.sqrt(((u[:, None, :] - u[None, :, :]) ** 2).sum(axis=-1)).mean()     # zeros on the diagonal
    assert metrics.mean_distance(u, u, rows=7) == pytest.approx(within, rel=1e-9)


def test_metric_floor_and_known_distances():
    a = np.array([[0.0], [1.0], [2.0]])
    assert metrics.wasserstein_1d(a, a + 0.5) == pytest.approx(0.5)
    assert metrics.wasserstein_1d(np.array([0.0, 1.0]), np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.0)
    shifted = data.toy("spiral", 2000) + np.float32(0.3)
    d, floor = metrics.distance_to_data(shifted, "spiral")
    assert d > 5 * floor


def run_demo(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "demos", script), *args],
                          capture_output=True, text=True, timeout=300)


def test_toy_demo_end_to_end(tmp_path):
    out = str(tmp_path / "run")
    result = run_demo("toy2d.py", "--data", "gaussian_mixture", "--nb-samples", "200", "--nb-epochs", "1",
                      "--nb-generated", "50", "--out", out, "--no-window", "--no-progress", "--trajectory")
    assert result.returncode == 0, result.stderr
    for name in ("toy.png", "samples.npy", "checkpoint.npz", "loss.csv", "trajectory.png", "trajectory.gif"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert np.load(os.path.join(out, "samples.npy")).shape == (50, 1)
    assert "distance / floor" in result.stdout
    resumed = run_demo("toy2d.py", "--data", "gaussian_mixture", "--nb-samples", "200", "--nb-epochs", "2",
                       "--nb-generated", "50", "--out", out, "--no-window", "--no-progress",
                       "--resume", os.path.join(out, "checkpoint.npz"))
    assert resumed.returncode == 0, resumed.stderr


def test_toy_fast_recipe_skips_the_bound_unless_asked(tmp_path):
    """--recipe fast leaves out the bound (a fifth of its whole process); --bound brings it back,
    and the lecture's configuration computes it as before."""
    sys.path.insert(0, os.path.join(ROOT, "demos"))
    import toy2d

    from numpy_ddpm.app import cli
    parse = lambda *flags: cli.parse(toy2d.parser(), list(flags)).no_bound       # noqa: E731
    assert (parse(), parse("--recipe", "fast"), parse("--recipe", "fast", "--bound"), parse("--no-bound")) \
        == (False, True, False, True)
    out = str(tmp_path / "fast")
    result = run_demo("toy2d.py", "--recipe", "fast", "--nb-samples", "512", "--nb-epochs", "1", "--nb-generated",
                      "20", "--sampling-steps", "5", "--out", out, "--no-window", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "NLL bound" not in result.stdout and "distance / floor" in result.stdout
    assert not os.path.exists(os.path.join(out, "bound.png")) and os.path.exists(os.path.join(out, "toy.png"))


@pytest.mark.parametrize("args,expected", [
    (["--data", "nope"], "unknown data set 'nope'"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--backend", "cupy"], "cupy"),
])
def test_toy_demo_user_errors(tmp_path, args, expected):
    if args[0] == "--backend":
        from conftest import CUPY_SKIP
        if CUPY_SKIP is None:
            pytest.skip("cupy and a GPU are present: --backend cupy works here")
    result = run_demo("toy2d.py", *args, "--out", str(tmp_path), "--no-window")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "demos", "toy2d.py"), "--nb-epochs", "1000",
                                "--nb-samples", "500", "--out", str(out), "--no-window", "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "loss.csv").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("stopped: interrupted at step")
    from numpy_ddpm.nn import checkpoint
    _, meta = checkpoint.load(str(out / "checkpoint.npz"))
    assert meta["step"] > 0 and meta["step"] == int(stderr.split("interrupted at step ")[1].split(";")[0])


def test_collapse_is_seen_from_the_logged_losses():
    from numpy_ddpm.app.train import collapse_since
    band = [(100, 0.5), (200, 1.01), (300, 0.99), (400, 1.0)]
    assert collapse_since(band, warmup_steps=0) == 100                   # windows 100-400: 300 steps at 1
    assert collapse_since(band[:-1], warmup_steps=0) is None             # 200 steps only
    assert collapse_since(band, warmup_steps=200) is None                # the warm-up does not count
    assert collapse_since([(100, 1.0), (200, 0.5), (300, 1.0), (400, 1.0)], 0) is None   # interrupted


def test_a_collapsed_run_stops_in_one_line_and_keeps_its_checkpoint(tmp_path):
    """A network with a constant (zero) output has the loss E[eps^2] = 1: the run stops after
    300 such steps, with its checkpoint, unless collapse_stop is off."""
    from numpy_ddpm.app.train import TrainingCollapsed
    from numpy_ddpm.models.conditioning import TimeAppender
    from numpy_ddpm.nn import Linear, Sequential
    x = backend.asarray(np.random.default_rng(0).standard_normal((64 * 400, 2)), dtype=backend.dtype)

    def trainer(stop):
        model = Sequential(TimeAppender(), Linear(3, 2, np.random.default_rng(0)))
        model.flat_params[...] = 0                                        # eps_hat = 0 whatever x_t
        config = TrainConfig(nb_epochs=1, batch_size=64, learning_rate=1e-30, log_every=100, collapse_stop=stop)
        return Trainer(model, Schedule(), config, meta={"model": "zero"})
    path = str(tmp_path / "c.npz")
    collapsing = trainer(True)
    with pytest.raises(TrainingCollapsed, match="collapsed.*from step 0 to 300.*checkpoint saved"):
        collapsing.fit(x, checkpoint_path=path, progress=False)
    assert collapsing.step == 300 and checkpoint.load(path)[1]["step"] == 300
    going_on = trainer(False)
    going_on.fit(x, progress=False)
    assert going_on.step == 400
