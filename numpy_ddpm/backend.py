"""The array backend: the one module of numpy_ddpm that imports numpy (and, when asked, cupy).

Every other module reaches the array library through `backend.xp` at call time, so the same
code runs on numpy arrays (CPU) and on cupy arrays (CUDA). Nothing switches on its own (on
import, the numpy backend is chosen and the C allocator set to reuse freed blocks: see
reuse_freed_memory):

    from numpy_ddpm import backend
    backend.use("cupy")          # or "numpy", the default

Working precision is float32; the gradient checks ask for float64 with `backend.precision`.

Fused kernels: the GPU port may register a faster version of a reference function
(`adam_update`, `ema_update`, `q_sample`, `sampling_step`). `backend.fused(name, reference)`
returns the registered one while the cupy backend is active and fusion is on, else the
reference itself, so the math always lives in numpy_ddpm/ and CUDA source never does.
"""

import contextlib
import os
import statistics
import time

import numpy


class BackendError(RuntimeError):
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
    `tf32` allows TensorFloat-32 matrix products, off by default). The first use("numpy"),
    made when numpy_ddpm is imported, also sets the C allocator up (reuse_freed_memory)."""
    global xp, name, _device_random, _allocator_set
    if backend_name == "numpy":
        xp, name, _device_random = numpy, "numpy", None
        _fused_kernels.clear()
        if not _allocator_set:              # once per process, at the first use (import)
            _allocator_set = True
            if os.environ.get(REUSE_MEMORY_VARIABLE, "1") != "0":
                reuse_freed_memory()
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


@contextlib.contextmanager
def blas_threads(count, probe=20, every=500, check=None):
    """Limit the CPU's BLAS to `count` threads inside the block (None: leave it alone), or with
    "auto" let a BlasTuner choose while a loop runs (its `probe`, `every` and `check`). Yields
    the tuner, active only for "auto": time each step of the loop with `tuner.step()` or
    `tuner.steps()`.

    Small matrix products (the toy MLP at batch 25) run faster and steadier on one thread than
    split over two; on cupy this does nothing."""
    tuner = BlasTuner(probe, every, active=count == "auto", check=check)
    try:
        if count in (None, "auto") or name != "numpy":
            yield tuner
        else:
            from threadpoolctl import threadpool_limits
            with threadpool_limits(limits=count, user_api="blas"):
                yield tuner
    finally:
        tuner.close()


class BlasTuner:
    """For a loop of like steps on the CPU: keeps the BLAS on whichever is faster now, one thread
    or its default count, when both give the same bits. Every `every` steps, `probe` steps run on
    one thread and `probe` on the default, each timed, and the faster by the median runs until
    the next probe.

        with blas_threads("auto", check=one_step_without_side_effects) as tuner:
            for ...:                            # or: for ... in tuner.steps(iterable):
                with tuner.step():
                    ...one step...

    Why: with another busy program on a 2-core machine, OpenBLAS's two threads wait for each
    other. toy2d.py --recipe fast trained in 5.7-7.0 s on two threads and 7.1-7.6 s on one on the
    idle machine, and in 18-26 s on two, 7.3-7.9 s on one, beside a busy process.

    Reproducible by construction: whether a product comes out bitwise the same on one thread as
    on two depends on the BLAS kernel and the shapes. On OpenBLAS's Haswell (AVX2) kernels a 512 x
    128 by 128 x 128 product differs in 7% of its entries, whole rows near where the two threads
    split the work; on its SkylakeX kernels this project's models came out equal. So the tuner
    first runs `check()` (a function returning arrays: one step's products on fixed inputs, say)
    on one thread and on the default, and switches only if every array is bitwise equal; else,
    or without a check, it stays on the default count (`reason` says why). Either way a run's
    results are those of the default count, whatever the machine's load. Inactive (active=False,
    on cupy, or after a failed check), its steps only run.
    """

    default_clock = staticmethod(time.perf_counter)

    def __init__(self, probe=20, every=500, clock=None, active=True, check=None):
        self.probe, self.every, self.clock = probe, every, clock or BlasTuner.default_clock
        self.active = active and name == "numpy"
        self.count, self.best, self.threads = 0, None, None
        self.times = {1: [], None: []}          # seconds per step on one thread, on the default
        self.limiter = None
        self.reason = None                      # why an asked-for tuner stays on the default count
        if self.active:
            from threadpoolctl import ThreadpoolController
            self.controller = ThreadpoolController().select(user_api="blas")
            self.active = self._same_bits(check)

    def _same_bits(self, check):
        """Whether `check()` gives bitwise the same arrays on one thread as on the default count."""
        if check is None:
            self.reason = "no check of this loop's products was given"
            return False
        with self.controller.limit(limits=1):
            one = [(a.shape, to_numpy(a).tobytes()) for a in check()]
        if one == [(a.shape, to_numpy(a).tobytes()) for a in check()]:     # on the default count
            return True
        self.reason = "this BLAS rounds this loop's products differently on one thread"
        return False

    def _use(self, threads):
        if threads == self.threads or not self.active:
            return
        if self.limiter is not None:
            self.limiter.restore_original_limits()
        self.limiter = None if threads is None else self.controller.limit(limits=threads)
        self.threads = threads

    def step(self):
        """A context that runs one step of the loop, timed while probing."""
        return self._timed_step() if self.active else contextlib.nullcontext()

    @contextlib.contextmanager
    def _timed_step(self):
        phase = self.count % self.every
        probing = phase < 2 * self.probe
        self._use((1 if phase < self.probe else None) if probing else self.best)
        start = self.clock()
        yield
        if probing:
            self.times[self.threads].append(self.clock() - start)
            if phase == 2 * self.probe - 1:
                self.best = min(self.times, key=lambda k: statistics.median(self.times[k]))
                self.times = {1: [], None: []}
        self.count += 1

    def steps(self, iterable):
        """The items of `iterable`, the work of each (the loop's body) timed as one step."""
        if not self.active:
            yield from iterable
            return
        for item in iterable:
            with self.step():
                yield item

    def close(self):
        self._use(None)


REUSE_MEMORY_VARIABLE = "NUMPY_DDPM_REUSE_MEMORY"     # "0": the first use("numpy") leaves malloc alone
_allocator_set = False


def reuse_freed_memory(enable=True):
    """Let the C allocator keep and reuse freed blocks of up to 32 MB instead of returning them
    to the system (glibc only; elsewhere nothing happens); `enable=False` puts glibc's default
    thresholds back (128 KiB, fixed: glibc's own raising of them stays off). Returns whether it
    applied. The first `use("numpy")`, which importing numpy_ddpm makes, calls it, unless the
    environment variable NUMPY_DDPM_REUSE_MEMORY is "0".

    Why: a step makes temporaries of 0.1 to 10 MB (activations, ReLU masks, gradients). glibc
    maps each one above its threshold (128 KiB, raised only after larger blocks were freed)
    afresh from the system and unmaps it, or trims its heap, when freed, so every step pays page
    faults for them. The layers keep their own large work arrays (im2col's columns, Winograd's
    tiles and weight transforms) from step to step; this covers the rest (the MLP sampling 1000
    points: 351 faults a step without it, none with it; benchmarks/page_faults.py).
    """
    import ctypes
    import ctypes.util
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        mmap, trim = (32 * 2**20, 256 * 2**20) if enable else (128 * 2**10, 128 * 2**10)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap) and libc.mallopt(M_TRIM_THRESHOLD, trim))
    except (OSError, AttributeError):       # not glibc (musl has no mallopt)
        return False


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


use("numpy")        # the default backend, and the C allocator's settings (reuse_freed_memory)
