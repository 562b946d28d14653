"""Trains and samples the same small runs several ways and prints one JSON line of digests:
run by tests/test_reproducible.py in a subprocess per OpenBLAS kernel (OPENBLAS_CORETYPE set
in that subprocess alone), so the rest of the suite keeps the machine's own kernel.

    python tests/reproducible_run.py CHECKPOINT_DIR

The BLAS tuner's clock is replaced by one that makes one thread look cheaper, or the default
count, so that the tuner's choice is forced either way, as a machine's load would force it.
"""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from threadpoolctl import ThreadpoolController, threadpool_info

from numpy_ddpm import backend, data
from numpy_ddpm.app.train import TrainConfig, Trainer
from numpy_ddpm.diffusion import ddim_generate
from numpy_ddpm.models import mlp
from numpy_ddpm.schedule import Schedule

BLAS = ThreadpoolController().select(user_api="blas")


def clock_favouring(threads):
    """A clock for the BLAS tuner under which a step on `threads` (1, or None: the default
    count) takes half the time of a step on the other."""
    now = [0.0]

    def clock():
        on_one = BLAS.lib_controllers[0].num_threads == 1
        now[0] += 0.5 if on_one == (threads == 1) else 1.0
        return now[0]
    return clock


def digest(array):
    return hashlib.sha256(backend.to_numpy(array).tobytes()).hexdigest()[:16]


def train(x, threads, favour=None, stop_at=None, path=None):
    """Weights after 2 epochs of 512-point batches (with a shorter last batch), on `threads`;
    with `stop_at`, stopped there, saved to `path` and resumed by a new Trainer."""
    backend.BlasTuner.default_clock = staticmethod(clock_favouring(favour))

    def trainer():
        config = TrainConfig(nb_epochs=2, batch_size=512, learning_rate=1e-2, blas_threads=threads)
        return Trainer(mlp(2, hidden=128, seed=0), Schedule(), config)
    run = trainer()
    if stop_at is not None:
        run.fit(x, progress=False, max_steps=stop_at, checkpoint_path=path)
        run = trainer()
        run.load(path)
    run.fit(x, progress=False)
    return run


def sample(model, favour):
    """200 points by 50 DDIM steps at eta 1, the tuner (if its check passes) on the steps."""
    backend.BlasTuner.default_clock = staticmethod(clock_favouring(favour))
    schedule, shape = Schedule(), (600, 2)
    fixed = backend.default_rng(5).standard_normal(shape, dtype=backend.dtype)
    check = lambda: [model.forward(fixed, 0.25)]       # noqa: E731
    with backend.blas_threads("auto", probe=3, every=10, check=check) as tuner:
        x = ddim_generate(model, shape, schedule, backend.default_rng(1), nb_steps=50, eta=1.0,
                          progress=tuner.steps)
    return x, tuner


def main(directory):
    x = backend.asarray(data.standardise(data.toy("spiral", 512 * 12 + 100, seed=0))[0])
    runs = {"default": train(x, None),
            "auto, one thread cheaper": train(x, "auto", favour=1),
            "auto, default cheaper": train(x, "auto", favour=None),
            "auto, stopped at 7 and resumed": train(x, "auto", favour=1, stop_at=7,
                                                   path=os.path.join(directory, "c.npz"))}
    weights = {name: digest(run.model.flat_params) for name, run in runs.items()}
    model = runs["default"].model.train(False)
    samples, tuners = {}, {}
    for favour in (1, None):
        x_0, tuner = sample(model, favour)
        samples[f"auto, {'one thread' if favour == 1 else 'default'} cheaper"] = digest(x_0)
        tuners[str(favour)] = {"active": tuner.active, "reason": tuner.reason}
    print(json.dumps({"architecture": [i.get("architecture") for i in threadpool_info()
                                       if i.get("user_api") == "blas"],
                      "weights": weights, "samples": samples, "tuners": tuners}))


if __name__ == "__main__":
    main(sys.argv[1])
