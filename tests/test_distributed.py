"""Data-parallel training (numpy_ddpm/distributed.py): a 2-process run under mpiexec follows the
1-process run, checkpoints resume across process counts, a failing rank ends the job, and the
NCCL path calls its communicator on the flat device buffer (through a stand-in for cupy).

The MPI cases start `mpiexec -n 2 python tests/distributed_run.py ...` and skip, saying why,
when mpi4py or mpiexec is missing (the `test` extra installs both: mpi4py and the mpich wheel).

The bound. The two runs differ only in the order of float32 sums: each rank sums its slice's
gradients and the all-reduce adds the slices, instead of one pass over the batch. That changes
a gradient by a few float32 epsilons (1.2e-7) of the summed magnitudes; the parameters, EMA and
moments, float32 themselves, then separate by a few ulps a step, amplified where Adam divides a
nearly cancelling gradient by sqrt(v_hat). Measured: at most 3.6e-7 of an array's largest entry
(MLP, 200 steps) and 4.4e-6 (conv net, 12 steps). Weighting the slices 1/P instead of n_r / N,
the bug this property exists to catch, moves every array by 4e-3 to 2e-1 of its largest entry.
The tolerance, 2e-4 of the largest entry, sits 45 times above the first and 20 below the second.
"""

import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from numpy_ddpm.app import distributed
from numpy_ddpm.nn import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import distributed_run  # noqa: E402

ROUND_OFF = 2e-4          # of each array's largest entry: see the module docstring
ARRAYS = ("params", "ema", "adam_m", "adam_v")


def _mpi_skip_reason():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'numpy-ddpm[mpi]')"
    if shutil.which("mpiexec") is None:
        return "no mpiexec on PATH (pip install mpich)"
    return None


MPI_SKIP = _mpi_skip_reason()
needs_mpi = pytest.mark.skipif(MPI_SKIP is not None, reason=str(MPI_SKIP))


def launch(nb_ranks, *args, timeout=60):
    """mpiexec -n nb_ranks python *args (a script and its flags), one BLAS thread per rank."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(["mpiexec", "-n", str(nb_ranks), sys.executable, *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def run_ranks(nb_ranks, model, steps, path, *flags):
    result = launch(nb_ranks, os.path.join(HERE, "distributed_run.py"), "--model", model, "--steps", str(steps),
                    "--checkpoint", path, "--distributed", *flags)
    assert result.returncode == 0, result.stderr
    return checkpoint.load(path)


def run_here(model, steps, path, resume=None):
    distributed_run.train(model, steps, path, resume)
    return checkpoint.load(path)


def assert_same_state(ours, theirs):
    (a, meta_a), (b, meta_b) = ours, theirs
    assert meta_a["step"] == meta_b["step"] and meta_a["adam_t"] == meta_b["adam_t"]
    for name in ARRAYS:
        scale = np.abs(a[name]).max()
        assert scale > 0 and np.abs(a[name] - b[name]).max() <= ROUND_OFF * scale, name


# No MPI needed --------------------------------------------------------------------------------

def test_the_global_batch_is_dealt_in_contiguous_slices_differing_by_at_most_one():
    for N in range(1, 30):
        for P in range(1, 6):
            sizes = distributed.slice_sizes(N, P)
            assert sum(sizes) == N and max(sizes) - min(sizes) <= 1
            rows = [i for r in range(P) for i in range(N)[distributed.rank_slice(N, P, r)]]
            assert rows == list(range(N))


def test_importing_numpy_ddpm_does_not_import_mpi4py():
    code = ("import sys; import numpy_ddpm.app.cli, numpy_ddpm.app.experiment, numpy_ddpm.app.train; "
            "assert 'mpi4py' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_distributed_without_an_mpi_launch_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCH_VARIABLES}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "demos", "toy2d.py"), "--distributed",
                             "--out", str(tmp_path), "--no-window"], capture_output=True, text=True,
                            env=env, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--distributed" in lines[0], result.stderr


class FakeNccl:
    """Stands in for cupy.cuda.nccl: records the communicator's construction and its calls."""
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = "f32", "f64", "sum"
    made, calls = [], []

    @staticmethod
    def get_unique_id():
        return "id-of-rank-0"

    class NcclCommunicator:
        def __init__(self, size, unique_id, rank):
            FakeNccl.made.append((size, unique_id, rank))

        def allReduce(self, send, receive, count, kind, op, stream):
            FakeNccl.calls.append((send, receive, count, kind, op, stream))


class FakeMpiComm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def bcast(self, value, root):
        return "id-of-rank-0"       # what rank 0 sent


def test_nccl_path_reduces_the_flat_device_buffer_in_place(monkeypatch):
    from cupy_backend import nccl
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(nccl=FakeNccl, runtime=types.SimpleNamespace(getDeviceCount=lambda: 2),
                                      get_current_stream=lambda: types.SimpleNamespace(ptr=77))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", FakeNccl)
    assert [nccl.device_for_rank(r) for r in range(5)] == [0, 1, 0, 1, 0]
    assert distributed.cuda_device(3) == 1

    reduce = nccl.NcclAllReduce(FakeMpiComm(rank=1, size=2))
    assert FakeNccl.made == [(2, "id-of-rank-0", 1)]
    flat = types.SimpleNamespace(data=types.SimpleNamespace(ptr=4096), size=1234, dtype="float32")
    reduce(flat)
    assert FakeNccl.calls == [(4096, 4096, 1234, "f32", "sum", 77)]     # in place, on the current stream


# Under mpiexec ---------------------------------------------------------------------------------

@needs_mpi
@pytest.mark.parametrize("model,steps", [("mlp", 200), ("conv", 12), ("unet", 6)])
def test_two_processes_follow_one(tmp_path, model, steps):
    one = run_here(model, steps, str(tmp_path / "one.npz"))
    two = run_ranks(2, model, steps, str(tmp_path / "two.npz"))
    assert_same_state(two, one)


def _gpu_count():
    from conftest import CUPY_SKIP
    if CUPY_SKIP is not None:
        return 0
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


@needs_mpi
@pytest.mark.skipif(_gpu_count() < 2, reason="needs cupy and two CUDA devices (benchmarks/gpu_check.sh)")
def test_two_gpus_over_nccl_follow_one(tmp_path):
    from numpy_ddpm import backend
    backend.use("cupy")
    try:
        one = run_here("mlp", 200, str(tmp_path / "one.npz"))
    finally:
        backend.use("numpy")
    two = run_ranks(2, "mlp", 200, str(tmp_path / "two.npz"), "--backend", "cupy")
    assert_same_state(two, one)


@needs_mpi
def test_a_checkpoint_resumes_with_another_number_of_processes(tmp_path):
    whole = run_here("mlp", 30, str(tmp_path / "whole.npz"))
    run_ranks(2, "mlp", 13, str(tmp_path / "a.npz"))                       # stopped mid-epoch
    resumed_alone = run_here("mlp", 30, str(tmp_path / "a.npz"), resume=str(tmp_path / "a.npz"))
    assert_same_state(resumed_alone, whole)
    run_here("mlp", 13, str(tmp_path / "b.npz"))
    resumed_by_two = run_ranks(2, "mlp", 30, str(tmp_path / "b.npz"), "--resume", str(tmp_path / "b.npz"))
    assert_same_state(resumed_by_two, whole)


@needs_mpi
@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_rank_that_raises_ends_every_rank(tmp_path, failing_rank):
    path = str(tmp_path / "c.npz")
    # 10 steps an epoch, a checkpoint at each epoch's end; rank r raises at its step 25 of 10^6
    result = launch(2, os.path.join(HERE, "distributed_run.py"), "--steps", "1000000", "--checkpoint", path,
                    "--distributed", "--fail-rank", str(failing_rank), "--fail-step", "25", timeout=60)
    assert result.returncode != 0
    assert f"a planted failure on rank {failing_rank}" in result.stderr
    assert checkpoint.load(path)[1]["step"] == 20           # the last complete checkpoint is kept


@needs_mpi
def test_ctrl_c_stops_every_rank_after_the_same_step_and_rank_0_saves(tmp_path):
    import signal
    import time
    path = tmp_path / "c.npz"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(["mpiexec", "-n", "2", sys.executable, os.path.join(HERE, "distributed_run.py"),
                                "--steps", "1000000", "--checkpoint", str(path), "--distributed"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not path.exists() and time.time() < deadline:      # the first epoch's checkpoint
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)          # mpiexec passes it on to the ranks
    _, stderr = process.communicate(timeout=60)
    last = stderr.strip().splitlines()[-1]
    assert process.returncode == 130 and last.startswith("stopped: interrupted at step"), stderr
    assert stderr.count("stopped:") == 1                    # from rank 0 alone
    assert checkpoint.load(str(path))[1]["step"] == int(last.split("interrupted at step ")[1].split(";")[0])


@needs_mpi
def test_ranks_started_with_other_flags_is_a_one_line_error(tmp_path):
    demo = [sys.executable, os.path.join(ROOT, "demos", "toy2d.py"), "--distributed", "--out", str(tmp_path),
            "--no-window", "--nb-samples", "50"]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run(["mpiexec", "-n", "1", *demo, "--seed", "0", ":", "-n", "1", *demo, "--seed", "1"],
                            capture_output=True, text=True, timeout=60, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "rank 1 was started with other flags than rank 0 (seed)" in lines[0]


@needs_mpi
def test_toy_demo_on_two_ranks_gathers_the_samples_on_rank_0(tmp_path):
    out = str(tmp_path / "run")
    result = launch(2, os.path.join(ROOT, "demos", "toy2d.py"), "--distributed", "--data", "gaussian_mixture",
                    "--nb-samples", "100", "--nb-epochs", "1", "--nb-generated", "5", "--out", out,
                    "--no-window", "--no-progress", "--ema-decay", "0.5", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote ") == 1                # rank 0 alone writes and reports
    assert np.load(os.path.join(out, "samples.npy")).shape == (5, 1)      # 3 from rank 0, 2 from rank 1
    assert checkpoint.load(os.path.join(out, "checkpoint.npz"))[1]["step"] == 4
