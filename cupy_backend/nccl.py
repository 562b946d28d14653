"""The gradient all-reduce between GPUs: NCCL (through cupy.cuda.nccl) on the flat device
buffer, with no copy to the host. Used by numpy_ddpm.app.distributed on the cupy backend.

MPI starts the processes and carries NCCL's unique id from rank 0 to the others; NCCL then
moves the gradients itself (NVLink, PCIe or InfiniBand). Rank r works on CUDA device
r modulo the visible devices, so P ranks on one node of G GPUs fill them in turn.
"""


def device_for_rank(rank):
    """The CUDA device of rank `rank`: rank modulo the number of visible devices."""
    import cupy
    return rank % cupy.cuda.runtime.getDeviceCount()


class NcclAllReduce:
    """`all_reduce(flat)`: flat <- the sum of every rank's flat, in place on the device.

    Made collectively (every rank at once) from an mpi4py communicator."""

    def __init__(self, mpi_comm):
        from cupy.cuda import nccl
        rank, size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        unique_id = mpi_comm.bcast(nccl.get_unique_id() if rank == 0 else None, root=0)
        self.nccl = nccl
        self.communicator = nccl.NcclCommunicator(size, unique_id, rank)

    def __call__(self, flat):
        """Sum `flat` (a contiguous cupy array, float32 or float64) over the ranks, in place, on
        the current stream: the next kernels on that stream (Adam) see the sum."""
        import cupy
        kinds = {"float32": self.nccl.NCCL_FLOAT32, "float64": self.nccl.NCCL_FLOAT64}
        pointer = flat.data.ptr
        self.communicator.allReduce(pointer, pointer, flat.size, kinds[str(flat.dtype)],
                                    self.nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr)
