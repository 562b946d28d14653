"""Data-parallel training over MPI: every rank holds the whole model and the whole global batch's
draws, computes the loss and gradients on its own slice of that batch, and one in-place
all-reduce of the flat gradient buffer per step gives every rank the gradient of the global
batch's mean loss. Adam and the EMA then make the same update on every rank.

    mpiexec -n P python demos/toy2d.py --distributed ...

Notation: N the global batch size, P the number of ranks, n_r the size of rank r's slice
(N // P or N // P + 1: the first N % P ranks take one more example).

The global batch's mean loss is L = (1/N) sum_n l_n = sum_r (n_r / N) L_r, with L_r the mean
loss of rank r's slice, so its gradient is sum_r (n_r / N) grad L_r: each rank scales its
slice's gradient by w_r = n_r / N and the all-reduce sums. In one process (`SINGLE`) every
collective is the identity, so training reads and runs as before.

mpi4py is imported only by `connect()`, i.e. only when --distributed is asked for. On the cupy
backend the all-reduce runs on the device through NCCL (cupy_backend/nccl.py).
"""

import os
import sys
import time
import traceback

from .. import backend
from ..errors import Error

LAUNCH_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
FAILURE_GRACE_S = 3.0       # how long a failing rank waits to see whether every rank failed alike


class DistributedError(Error, RuntimeError):
    """--distributed cannot run as asked (no MPI launch, no mpi4py, ranks started differently)."""


def slice_sizes(N, P):
    """[n_0, ..., n_{P-1}]: N examples dealt to P ranks, the first N % P ranks taking one more."""
    return [N // P + (1 if r < N % P else 0) for r in range(P)]


def rank_slice(N, P, r):
    """The rows of a global batch of N that rank r of P works on: a contiguous slice."""
    sizes = slice_sizes(N, P)
    start = sum(sizes[:r])
    return slice(start, start + sizes[r])


class Single:
    """One process: rank 0 of 1, and every collective the identity."""

    rank, size = 0, 1

    def part(self, N):
        return slice(None)

    def part_size(self, N):
        return N

    def sum_gradients(self, flat_grads, loss, N):
        return loss

    def sum(self, value):
        return value

    def any(self, flag):
        return bool(flag)

    def sampling_keys(self):
        return ()

    def gather_rows(self, x):
        return x

    def done(self):
        return True


SINGLE = Single()
_world = None       # the connected MPIWorld of this process (MPI has one world per process)


class MPIWorld:
    """The ranks of MPI.COMM_WORLD, P >= 1 processes started by mpiexec."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.failures = comm.Dup()      # only for `end`: never mixed with training's collectives
        self._nccl = None               # the device all-reduce, made at the first cupy step

    # The slice of the global batch ---------------------------------------------------------

    def part(self, N):
        """This rank's rows of a global batch of N."""
        return rank_slice(N, self.size, self.rank)

    def part_size(self, N):
        return slice_sizes(N, self.size)[self.rank]

    # The all-reduce ------------------------------------------------------------------------

    def sum_gradients(self, flat_grads, loss, N):
        """flat_grads <- sum_r w_r flat_grads_r with w_r = n_r / N, in place on every rank: the
        gradient of the global batch's mean loss. Returns this rank's share w_r L_r of that loss
        (the Trainer sums the shares when it logs)."""
        w = self.part_size(N) / N
        flat_grads *= w
        if backend.name == "cupy":
            if self._nccl is None:
                from cupy_backend.nccl import NcclAllReduce
                self._nccl = NcclAllReduce(self.comm)
            self._nccl(flat_grads)
        else:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, flat_grads, op=MPI.SUM)
        return loss * w

    def sum(self, value):
        """The sum of a host number over the ranks."""
        return self.comm.allreduce(value)

    def any(self, flag):
        """Whether any rank has `flag` set: the stop agreement made between steps, so that every
        rank leaves the loop after the same step and none is left waiting in a collective."""
        from mpi4py import MPI
        return bool(self.comm.allreduce(bool(flag), op=MPI.LOR))

    # Sampling -------------------------------------------------------------------------------

    def sampling_keys(self):
        """Extra seed keys of this rank's sampling noise: its rank, so ranks draw different
        samples (a P-process run's samples differ from a 1-process run's)."""
        return (self.rank,)

    def gather_rows(self, x):
        """Rank 0: every rank's host array x (n_r, ...) stacked in rank order; others: None."""
        parts = self.comm.gather(x, root=0)
        return backend.np.concatenate(parts) if self.rank == 0 else None

    def done(self):
        """Every collective is over: returns whether this rank goes on to write the results
        (rank 0, alone from here, so that a later error of it needs no agreement); the callers
        of the other ranks return."""
        global _world
        _world = None
        return self.rank == 0


# Joining and leaving ----------------------------------------------------------------------------

def connect(flags):
    """Join the MPI job this process was started in and check that every rank got the same
    `flags` (a dict). Returns the MPIWorld, or raises DistributedError (on every rank alike)."""
    global _world
    try:
        import mpi4py
    except ImportError:
        raise DistributedError("--distributed needs mpi4py and an MPI library: "
                               "pip install 'numpy-ddpm[mpi]'") from None
    if not any(name in os.environ for name in LAUNCH_VARIABLES):
        raise DistributedError("--distributed must be started by MPI: "
                               "mpiexec -n P python <script> --distributed ...")
    mpi4py.rc.threads = False
    from mpi4py import MPI
    world = MPIWorld(MPI.COMM_WORLD)
    _world = world
    every = world.comm.allgather(sorted(flags.items()))
    for rank, theirs in enumerate(every):
        differing = [name for (name, value), (_, other) in zip(every[0], theirs) if value != other]
        if differing or len(theirs) != len(every[0]):
            name = (differing or ["the set of flags"])[0]
            raise DistributedError(f"rank {rank} was started with other flags than rank 0 "
                                   f"({name.replace('_', '-')}): start every rank with the same")
    return world


def cuda_device(rank):
    """The CUDA device of rank r: r modulo the visible devices."""
    from cupy_backend.nccl import device_for_rank
    return device_for_rank(rank)


def end(message, code):
    """Print the one-line `message` and exit with `code`, without leaving any rank waiting.

    One process: print and exit. Under MPI, a failing rank waits up to FAILURE_GRACE_S for the
    others on a barrier of its own communicator: if every rank failed alike (a bad flag, a
    missing file), rank 0 alone prints and all exit with `code`; if some rank is still
    training, waiting in a collective, the failing rank prints (with its rank) and aborts the
    whole job (MPI_Abort), which mpiexec turns into a non-zero exit of every rank.
    """
    world = _world
    if world is None or world.size == 1:
        print(message, file=sys.stderr)
        sys.exit(code)
    if world.rank == 0:
        print(message, file=sys.stderr, flush=True)
    request = world.failures.Ibarrier()
    deadline = time.monotonic() + FAILURE_GRACE_S
    while not request.Test():
        if time.monotonic() > deadline:
            if world.rank != 0:
                print(f"rank {world.rank}: {message}", file=sys.stderr, flush=True)
            world.comm.Abort(code)
        time.sleep(0.01)
    sys.exit(code)


ABORT_GRACE_S = 0.5     # seconds between a failing rank's traceback and its abort of the job


def end_on_bug():
    """An unexpected exception on a rank under MPI: its traceback, then abort every rank (the
    others may be waiting for it in a collective). One process: re-raise it as usual."""
    world = _world
    if world is None or world.size == 1:
        raise
    # one write, then a moment for mpiexec to pass it on: an abort right after it could cut the
    # traceback short in mpiexec's forwarding (seen: its first line alone)
    sys.stderr.write(f"{traceback.format_exc()}rank {world.rank} failed: aborting every rank\n")
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)
    world.comm.Abort(1)
