"""The whole training and sampling path on an array type as strict as cupy (strict_backend.py),
so that code which would fail or stall on a GPU fails here, on the CPU."""

import numpy as np
import pytest

from numpy_ddpm import backend, data
from numpy_ddpm.app.train import TrainConfig, Trainer
from numpy_ddpm.diffusion import generate
from numpy_ddpm.models import convnet, mlp
from numpy_ddpm.schedule import Schedule

import strict_backend


@pytest.fixture
def strict():
    restore = strict_backend.activate(backend)
    strict_backend.StrictArray.syncs = 0
    yield strict_backend
    restore()


def test_the_strict_array_refuses_what_cupy_refuses(strict):
    a = backend.xp.ones(3)
    assert isinstance(a, strict.StrictArray)
    with pytest.raises(TypeError, match="implicit conversion"):
        np.stack([a, a])
    with pytest.raises(TypeError, match="iterating"):
        list(a)
    assert isinstance(a + 1, strict.StrictArray) and isinstance(backend.xp.sqrt(a), strict.StrictArray)


@pytest.mark.parametrize("make,shape", [(lambda: mlp(2, hidden=16), (64, 2)),
                                        (lambda: convnet(1, width=4, kernel_size=3), (12, 1, 6, 6))])
def test_training_and_sampling_stay_on_the_device(strict, tmp_path, make, shape):
    x_host = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model = make()
    assert isinstance(model.flat_params, strict.StrictArray)
    config = TrainConfig(nb_epochs=3, batch_size=4, log_every=10, ema_decay=0.9)
    trainer = Trainer(model, Schedule(), config, meta={"model": "m"})
    x = backend.asarray(x_host)
    trainer.fit(x, checkpoint_path=str(tmp_path / "c.npz"), log_path=str(tmp_path / "l.csv"), progress=False)
    steps = trainer.step
    assert steps == 3 * shape[0] // 4
    # the loss is read once per log_every steps and at the end of each epoch: no per-step sync
    assert strict.StrictArray.syncs <= steps // config.log_every + config.nb_epochs + 1
    trainer.finish()
    trainer.load(str(tmp_path / "c.npz"))

    strict.StrictArray.syncs = 0
    small = Schedule(T=30)
    out = generate(model, (5,) + shape[1:], small, backend.default_rng(1))
    assert isinstance(out, strict.StrictArray) and strict.StrictArray.syncs == 0
    assert np.all(np.isfinite(backend.to_numpy(out)))


def test_toy_data_metric_path(strict):
    """The demos' host-side path: samples come back with to_numpy before any host math."""
    from numpy_ddpm.evaluation import metrics
    samples = backend.asarray(data.toy("moons", 200))
    d, floor = metrics.distance_to_data(backend.to_numpy(samples), "moons")
    assert d > 0 and floor > 0
