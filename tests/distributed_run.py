"""A short training run for tests/test_distributed.py, started as

    mpiexec -n P python tests/distributed_run.py --model mlp --steps 200 --checkpoint c.npz --distributed

or imported and called (`train`) in the test's own process. The checkpoint it writes holds the
parameters, the EMA and Adam's moments. `--fail-rank r --fail-step k` makes rank r raise at
step k, to test that the whole job then ends; `--backend cupy` runs on rank r's GPU (NCCL)."""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from numpy_ddpm import backend, data  # noqa: E402
from numpy_ddpm.app import cli, distributed  # noqa: E402
from numpy_ddpm.app import train as training  # noqa: E402
from numpy_ddpm.models import convnet, mlp, unet  # noqa: E402
from numpy_ddpm.schedule import Schedule  # noqa: E402

# (model, data, batch size): over two ranks, batches of 25 split 13 + 12, of 15 split 8 + 7
RUNS = {
    "mlp": (lambda: mlp(2, hidden=32, seed=4), lambda: data.toy("spiral", 250, seed=4), 25),
    "conv": (lambda: convnet(1, width=4, kernel_size=3, seed=4), lambda: data.images("digits", 60), 15),
    # dropout 0.3: each rank's masks must be its rows of the masks one process draws
    "unet": (lambda: unet(base=8, multipliers=(1, 2), groups=2, image_size=8, attention=(), dropout=0.3, seed=4),
             lambda: data.images("digits", 60), 15),
}


def train(model_name, steps, checkpoint_path, resume=None, comm=distributed.SINGLE):
    """Train RUNS[model_name] for `steps` steps in all (from `resume` if given), checkpoint at the end."""
    make_model, make_data, batch_size = RUNS[model_name]
    x = backend.asarray(data.standardise(make_data())[0])
    config = training.TrainConfig(nb_epochs=1000, batch_size=batch_size, seed=5, ema_decay=0.9, log_every=10)
    trainer = training.Trainer(make_model(), Schedule(), config, meta={"model": model_name}, comm=comm)
    if resume:
        trainer.load(resume)
    trainer.fit(x, checkpoint_path=checkpoint_path, progress=False, max_steps=steps)
    return trainer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(RUNS), default="mlp")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--resume")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-step", type=int, default=-1)
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    args = parser.parse_args()
    comm = distributed.connect(vars(args)) if args.distributed else distributed.SINGLE
    backend.use(args.backend, distributed.cuda_device(comm.rank) if args.backend == "cupy" else None)
    step = training.train_step

    def failing_step(*a, **k):
        if comm.rank == args.fail_rank and failing_step.calls == args.fail_step:
            raise RuntimeError(f"a planted failure on rank {comm.rank}")
        failing_step.calls += 1
        return step(*a, **k)

    failing_step.calls = 0
    training.train_step = failing_step
    training.SAVE_EVERY = 0.0       # a checkpoint at every epoch's end, as the tests of a failing rank count on
    train(args.model, args.steps, args.checkpoint, args.resume, comm)


if __name__ == "__main__":
    with backend.blas_threads(1):
        cli.run(main)
