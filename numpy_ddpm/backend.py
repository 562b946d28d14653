"""The array backend: the one module of numpy_ddpm that imports numpy (and, when asked, cupy).

Every other module reaches the array library through `backend.xp` at call time, so the same
code runs on numpy arrays (CPU) and on cupy arrays (CUDA). Nothing switches on its own (on
import, the numpy backend is chosen):

    from numpy_ddpm import backend
    backend.use("cupy")          # or "numpy", the default

Working precision is float32; the gradient checks ask for float64 with `backend.precision`.

Fused kernels: the GPU port may register a faster version of a reference function
(`adam_update`, `ema_update`, `q_sample`, `sampling_step`). `backend.fused(name, reference)`
returns the registered one while the cupy backend is active and fusion is on, else the
reference itself, so the math always lives in numpy_ddpm/ and CUDA source never does.
"""

import contextlib

import numpy

from .errors import Error


class BackendError(Error, RuntimeError):
    """The backend that was asked for cannot run on this machine."""


np = numpy                  # the host array module, for data files, metrics and plots
xp = numpy                  # the array module in use: numpy, or cupy after use("cupy")
name = "numpy"
dtype = numpy.float32       # the working floating-point type
use_fused = True            # use registered fused kernels when the backend provides them
_fused_kernels = {}         # name -> fast version of a reference function, per backend
_device_random = None       # the generator class of a device backend


def use(backend_name, device=None, tf32=False):
    """Choose the array backend: "numpy" (CPU) or "cupy" (CUDA device `device`, default 0;
    `tf32` allows TensorFloat-32 matrix products, off by default).    """
    global xp, name, _device_random
    if backend_name == "numpy":
        xp, name, _device_random = numpy, "numpy", None
        _fused_kernels.clear()
    elif backend_name == "cupy":
        try:
            import cupy_backend
        except ImportError as error:  # cupy_backend itself ships with numpy_ddpm
            raise BackendError(f"the cupy backend could not be loaded: {error}") from None
        module, kernels, _device_random = cupy_backend.activate(device, tf32)   # or BackendError
        xp, name = module, "cupy"
        _fused_kernels.clear()
        _fused_kernels.update(kernels)
    else:
        raise BackendError(f"unknown backend {backend_name!r}: choose 'numpy' or 'cupy'")


def fused(kernel_name, reference):
    """The fused kernel registered as `kernel_name` if one is active, else `reference`."""
    if use_fused:
        return _fused_kernels.get(kernel_name, reference)
    return reference


@contextlib.contextmanager
def precision(dtype_name):
    """Work in "float32" or "float64" inside the block (arrays made inside keep their type)."""
    global dtype
    saved, dtype = dtype, numpy.dtype(dtype_name).type
    try:
        yield
    finally:
        dtype = saved


# Arrays ------------------------------------------------------------------------------------

def asarray(a, dtype=None):
    """`a` (a host array, list or number) as an array of the current backend."""
    return xp.asarray(a, dtype=dtype)


def to_numpy(a):
    """A host numpy copy of a backend array (a no-op for numpy arrays)."""
    if hasattr(a, "get"):       # cupy.ndarray: one device -> host transfer
        return a.get()
    return numpy.asarray(a)


# Random numbers ----------------------------------------------------------------------------

def default_rng(*keys):
    """A generator of the current backend, seeded by integers `keys` (e.g. seed, epoch).

    On cupy the numbers are drawn on the device by cupy's own generator.
    """
    if name == "numpy":
        return numpy.random.default_rng(list(keys))
    seed = int(numpy.random.SeedSequence(list(keys)).generate_state(1)[0])
    return _device_random(seed)


def host_rng(*keys):
    """A numpy generator on the host: model initialisation and data sets use it, so a model
    or a data set is the same whichever backend it ends up on."""
    return numpy.random.default_rng(list(keys) if keys else None)


use("numpy")        # the default backend

# The CPU process's tuning lives in cpu.py; its names stay importable from here.
from .cpu import BlasTuner, blas_threads, reuse_freed_memory  # noqa: E402, F401  (cpu.py imports this module)
