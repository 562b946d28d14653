"""The CPU process: how many threads the BLAS runs (one, or its default count, whichever is
faster now when both give the same bits: BlasTuner), and the C allocator's reuse of freed
blocks (reuse_freed_memory), which importing numpy_ddpm sets up unless
NUMPY_DDPM_REUSE_MEMORY=0. On the cupy backend none of this does anything."""

import contextlib
import os
import statistics
import time

from . import backend


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
        if count in (None, "auto") or backend.name != "numpy":
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
        self.active = active and backend.name == "numpy"
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
            one = [(a.shape, backend.to_numpy(a).tobytes()) for a in check()]
        if one == [(a.shape, backend.to_numpy(a).tobytes()) for a in check()]:     # on the default count
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


REUSE_MEMORY_VARIABLE = "NUMPY_DDPM_REUSE_MEMORY"     # "0": importing numpy_ddpm leaves malloc alone


def reuse_freed_memory(enable=True):
    """Let the C allocator keep and reuse freed blocks of up to 32 MB instead of returning them
    to the system (glibc only; elsewhere nothing happens); `enable=False` puts glibc's default
    thresholds back (128 KiB, fixed: glibc's own raising of them stays off). Returns whether it
    applied. Importing numpy_ddpm calls it (set_up_process), unless the environment variable
    NUMPY_DDPM_REUSE_MEMORY is "0".

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


def set_up_process():
    """What importing numpy_ddpm does to the process: reuse_freed_memory(), unless
    NUMPY_DDPM_REUSE_MEMORY is "0"."""
    if os.environ.get(REUSE_MEMORY_VARIABLE, "1") != "0":
        reuse_freed_memory()
