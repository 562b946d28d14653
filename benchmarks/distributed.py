"""Data-parallel training on this machine: steps per second with 1 and 2 MPI processes, one BLAS
thread each, and the fraction of each step spent in the gradient all-reduce.

    python benchmarks/distributed.py                 # both workloads, about a minute on 2 cores
    python benchmarks/distributed.py --quick         # fewer steps

Workloads: the lecture's conv net on the 8x8 digits at batch 128 (compute-heavy), and the toy
MLP (hidden 256) on the spiral at batch 25 (tiny steps, where communication dominates). The
1-process row is the plain single-process path; the 2-process row runs under
`mpiexec -n 2 ... --distributed`. "all-reduce" is the time in the gradient all-reduce (which
includes waiting for the slower rank) plus the per-step stop agreement, averaged over ranks, as
a fraction of the step. Needs mpi4py and mpiexec (pip install "numpy-ddpm[mpi]").
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from numpy_ddpm import backend, cpu, data  # noqa: E402
from numpy_ddpm.app import distributed  # noqa: E402
from numpy_ddpm.app.train import TrainConfig, Trainer  # noqa: E402
from numpy_ddpm.models import convnet, mlp  # noqa: E402
from numpy_ddpm.schedule import Schedule  # noqa: E402

WORKLOADS = {   # name: (model, data, batch size, timed steps, quick timed steps)
    "conv net, digits 8x8, batch 128": (lambda: convnet(1, width=64, kernel_size=5),
                                        lambda: data.images("digits", 1797), 128, 40, 10),
    "toy MLP, spiral, batch 25": (lambda: mlp(2, hidden=256), lambda: data.toy("spiral", 25000), 25, 2000, 300),
}


def worker(name, steps, use_mpi):
    """Time `steps` training steps of a workload after a warm-up; rank 0 prints one JSON line."""
    comm = distributed.connect({"name": name, "steps": steps}) if use_mpi else distributed.SINGLE
    make_model, make_data, batch_size, _, _ = WORKLOADS[name]
    x = backend.asarray(data.standardise(make_data())[0])
    model = make_model()
    trainer = Trainer(model, Schedule(), TrainConfig(nb_epochs=10**6, batch_size=batch_size, log_every=10**9),
                      comm=comm)
    agreeing, reducing = [0.0], [0.0]       # seconds in the loss's agreement and in the gradients' all-reduce
    if use_mpi:
        any_rank, sum_gradients = comm.any, comm.sum_gradients

        def timed_sum_gradients(*args):
            start = time.perf_counter()
            result = sum_gradients(*args)
            reducing[0] += time.perf_counter() - start
            return result
        comm.sum_gradients = timed_sum_gradients

        def timed_any(flag):
            start = time.perf_counter()
            result = any_rank(flag)
            agreeing[0] += time.perf_counter() - start
            return result
        comm.any = timed_any
    warmup = max(3, steps // 10)
    with cpu.blas_threads(1):
        trainer.fit(x, progress=False, max_steps=warmup)
        if use_mpi:
            comm.comm.Barrier()
            reducing[0], agreeing[0] = 0.0, 0.0
        start = time.perf_counter()
        trainer.fit(x, progress=False, max_steps=warmup + steps)
        seconds = time.perf_counter() - start
    reducing = reducing[0]
    if use_mpi:
        seconds, reducing, agreeing[0] = (comm.sum(value) / comm.size for value in (seconds, reducing, agreeing[0]))
    if comm.rank == 0:
        print(json.dumps({"name": name, "processes": comm.size, "steps_per_s": steps / seconds,
                          "allreduce_fraction": (reducing + agreeing[0]) / seconds,
                          "stop_agreement_fraction": agreeing[0] / seconds,
                          "parameters": int(model.flat_params.size)}))


def measure(name, steps, processes):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--steps", str(steps)]
    if processes > 1:
        command = ["mpiexec", "-n", str(processes), *command, "--distributed"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.distributed)
        return
    rows = []
    print("| workload | parameters | 1 process, steps/s | 2 processes, steps/s | speed-up "
          "| all-reduce, share of a step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (_, _, _, steps, quick_steps) in WORKLOADS.items():
        steps = quick_steps if args.quick else steps
        one, two = measure(name, steps, 1), measure(name, steps, 2)
        rows += [one, two]
        print(f"| {name} | {one['parameters']:,} | {one['steps_per_s']:.1f} | {two['steps_per_s']:.1f} | "
              f"{two['steps_per_s'] / one['steps_per_s']:.2f} | {two['allreduce_fraction']:.0%} |", flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
