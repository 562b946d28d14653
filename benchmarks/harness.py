"""How the benchmark times and weighs a workload.

Timing: every side of a row runs in a fresh process of its own, ours as PyTorch, with no set-up
that the library does not do by itself (a worker imports the package, builds the workload,
warms it up and times it on request). So the rows show what a script that imports numpy_ddpm
gets, and the two sides' thread pools cannot steal the cores from each other (in one process,
numpy's OpenBLAS threads and PyTorch's OpenMP threads kept spinning after their work: on 2 cores
that flattered numpy's ratio by 1.3 to 1.6x). The repeats alternate, one of each side in turn,
so that both see the same machine; each row reports the minimum and the median over its repeats.
`env` (OPENBLAS_CORETYPE=Haswell, say) goes to our side's workers alone.

Memory: the peak resident set that building a workload and three calls add to a fresh process
(Linux: /proc/self/clear_refs resets the peak).

    python benchmarks/harness.py worker IMPL INDEX QUICK ARG    (started by Worker)
    python benchmarks/harness.py memory INDEX IMPL ALGORITHM    (started by peak_memory)
    python benchmarks/harness.py peak QUICK                     (started by matmul_peak)
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def has_torch():
    """Whether PyTorch can be imported (without importing it into this process)."""
    return importlib.util.find_spec("torch") is not None


# Timers: one repeat of `calls` calls, seconds per call ---------------------------------------

class LocalTimer:
    """Times a function of this process (ours); `after` waits for the device."""

    def __init__(self, fn, warmup, after=lambda: None):
        self.fn, self.after = fn, after
        for _ in range(warmup):
            fn()
        after()

    def time(self, calls):
        start = time.perf_counter()
        for _ in range(calls):
            self.fn()
        self.after()
        return (time.perf_counter() - start) / calls

    def close(self):
        pass


class Worker:
    """Times workload `index` of workloads(quick) in a fresh worker process: `impl` "numpy" or
    "cupy" (ours, `arg` the convolution algorithm or "auto") or "torch" (`arg` the device).
    `info` is what the worker reported once warmed up (its BLAS)."""

    def __init__(self, impl, index, quick, arg, env=None):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "worker", impl, str(index), str(int(quick)), arg],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.info = self._read()                                # sent once warmed up

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker process ended early")
        return json.loads(line)

    def time(self, calls):
        self.process.stdin.write(f"{calls}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def blas_info():
    """The BLAS libraries loaded in this process, as threadpoolctl sees them."""
    from threadpoolctl import threadpool_info
    return [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info() if i.get("user_api") == "blas"]


def worker(impl, index, quick, arg):
    from workloads import workloads
    workload = workloads(quick)[index]
    if impl == "torch":
        import torch
        fn, after = workload.torch(arg), (torch.cuda.synchronize if arg == "cuda" else (lambda: None))
    else:
        from threadpoolctl import threadpool_limits

        from workloads import backend, sync
        backend.use(impl)
        fn, after = workload.ours(None if arg == "auto" else arg), sync
        if workload.blas_threads:       # the BLAS threads the demos use (one for the MLP at batch 25)
            threadpool_limits(limits=workload.blas_threads, user_api="blas")
    timer = LocalTimer(fn, workload.warmup, after)
    print(json.dumps({"blas": blas_info()}), flush=True)
    for line in sys.stdin:
        print(json.dumps(timer.time(int(line))), flush=True)


def alternate(timers, calls, repeats):
    """{label: [seconds per call, one per repeat]}, the timers' repeats interleaved."""
    times = {label: [] for label in timers}
    for _ in range(repeats):
        for label, timer in timers.items():
            times[label].append(timer.time(calls))
    return times


def summary(seconds):
    """(min, median) of a list of times."""
    return min(seconds), statistics.median(seconds)


# Memory ----------------------------------------------------------------------------------------

def rss_kib(field):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass
    return rss_kib("VmRSS:")


def peak_added_mib(baseline):
    peak = rss_kib("VmHWM:")
    return None if peak is None or baseline is None else max(0, peak - baseline) / 1024


def peak_memory(index, impl, algorithm=None, env=None):
    """Peak resident memory (MiB) that workload `index` adds to a fresh process, for `impl`
    ("numpy" or "torch-cpu", with the convolution `algorithm`): the model and three calls."""
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "memory", str(index), impl,
                             algorithm or "auto"], capture_output=True, text=True, env={**os.environ, **(env or {})})
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def memory_child(index, impl, algorithm):
    if impl.startswith("torch"):
        import torch  # noqa: F401  (imported before the baseline, as numpy is)
    from workloads import workloads
    workload = workloads(quick=False)[index]
    baseline = reset_peak()
    if impl.startswith("torch"):
        fn = workload.torch("cpu")
    else:
        fn = workload.ours(None if algorithm == "auto" else algorithm)
    for _ in range(3):
        fn()
    print(peak_added_mib(baseline))


def matmul_peak(quick, env=None):
    """numpy's float32 matmul rate on square matrices (GFLOP/s), best of three, in a fresh
    process (with `env`: another OpenBLAS kernel, say)."""
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "peak", str(int(quick))],
                            capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    return float(result.stdout)


def peak_child(quick):
    import numpy as np
    n = 1024 if quick else 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    print(2 * n ** 3 / best / 1e9)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "worker":
        worker(rest[0], int(rest[1]), bool(int(rest[2])), rest[3])
    elif command == "memory":
        memory_child(int(rest[0]), rest[1], rest[2])
    elif command == "peak":
        peak_child(bool(int(rest[0])))
