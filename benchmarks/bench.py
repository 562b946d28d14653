"""Speed and memory of numpy-ddpm against PyTorch.

    python benchmarks/bench.py              # every workload, several minutes on 2 cores
    python benchmarks/bench.py --quick      # a smoke run, under a minute
    python benchmarks/bench.py --coretype Haswell    # our side on OpenBLAS's AVX2 kernels
    python benchmarks/bench.py --e2e        # also demos/toy2d.py at the lecture's defaults, and
                                            # the same script in PyTorch (several minutes)
    python benchmarks/bench.py --markdown FILE    # also the table of benchmarks/README.md

Each workload (workloads.py) runs on the numpy backend, on the cupy backend when a GPU is
there, and in PyTorch when it is installed, every side in a fresh process of its own with no
set-up that the library does not do itself (harness.py); the conv rows run once per
convolution algorithm (im2col, winograd). After a warm-up the repeats alternate between the
implementations; each row gives the best and the median. Reported: the rate, achieved GFLOP/s
of the matrix products (the direct convolution's count, so an effective rate for Winograd),
the fraction of numpy's own float32 matmul peak, the peak memory added by the workload, and
the ratio numpy / PyTorch. The CPU, its vector instructions and the BLAS kernel that our side
ran are printed above the table. Results go to a JSON file.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from harness import Worker, alternate, has_torch, matmul_peak, peak_memory, summary  # noqa: E402
from workloads import backend, workloads  # noqa: E402


def backends_to_run(requested):
    names = ["numpy"] if "numpy" in requested else []
    if "cupy" in requested:
        try:
            backend.use("cupy")
            names.append("cupy")
        except backend.BackendError as error:
            print(f"(no GPU rows: {error})")
        finally:
            backend.use("numpy")
    return names


def torch_device(ours_backend):
    """PyTorch on CUDA next to our cupy rows when it sees a GPU, else on the CPU."""
    if ours_backend == "cupy":
        result = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                                capture_output=True, text=True)
        if result.stdout.strip() == "True":
            return "cuda"
    return "cpu"


def run_all(args):
    env = {"OPENBLAS_CORETYPE": args.coretype} if args.coretype else {}
    peak = matmul_peak(args.quick, env)
    print(f"numpy float32 matmul peak: {peak:.0f} GFLOP/s\n")
    results, blas = [], None
    names = [w.name for w in workloads(args.quick)]
    backends = backends_to_run(args.backends)
    for index, workload in enumerate(workloads(args.quick)):
        if args.only and args.only not in workload.name:
            continue
        full_index = [w.name for w in workloads(False)].index(workload.name)
        for b in backends:
            timers = {(b, a): Worker(b, index, args.quick, a or "auto", env) for a in workload.algorithms}
            if not workload.blas_threads:           # the BLAS on its own thread count
                blas = next(iter(timers.values())).info["blas"]
            if has_torch() and not args.no_torch:
                device = torch_device(b)
                timers[(f"torch-{device}", None)] = Worker("torch", names.index(workload.name), args.quick, device)
            times = alternate(timers, workload.calls, workload.repeats)
            for timer in timers.values():
                timer.close()
            rows = []
            for (impl, algorithm), seconds in times.items():
                memory = None
                if not args.quick and impl in ("numpy", "torch-cpu"):
                    memory = peak_memory(full_index, impl, algorithm, env if impl == "numpy" else None)
                rows.append(row(workload, impl, algorithm, seconds, memory, peak))
            torch_rows = [r for r in rows if r["impl"].startswith("torch")]
            for r in rows:
                if torch_rows and r is not torch_rows[0]:
                    r["ours_over_torch"] = r["per_second"] / torch_rows[0]["per_second"]
                    r["ours_over_torch_median"] = r["per_second_median"] / torch_rows[0]["per_second_median"]
                print_row(r)
            results += rows
    return peak, results, blas


def cpu_description():
    """The CPU's model name and its widest vector instructions (Linux; else the platform's word)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2" if flags else "?"
    return f"{model}, {vector}, {os.cpu_count()} CPUs"


def row(workload, impl, algorithm, seconds, memory, peak):
    best, median = summary(seconds)
    gflops = workload.flops / best / 1e9
    return {"workload": workload.name, "impl": impl, "algorithm": algorithm or "",
            "unit": "steps/s" if workload.kind == "train" else "samples/s",
            "per_second": workload.items / best, "per_second_median": workload.items / median,
            "seconds": seconds, "gflops": gflops, "fraction_of_peak": gflops / peak, "peak_memory_mib": memory}


def label(r):
    return f"{r['impl']} {r['algorithm']}".strip()


def ratio_text(r):
    if "ours_over_torch" not in r:
        return ""
    return f"{r['ours_over_torch']:.2f} ({r['ours_over_torch_median']:.2f})"


def print_row(r):
    memory = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
    print(f"{r['workload']:<34} {label(r):<16} {r['per_second']:>9.1f} {r['per_second_median']:>9.1f} {r['unit']:<9} "
          f"{r['gflops']:>7.1f} GFLOP/s {100 * r['fraction_of_peak']:>5.0f}% {memory:>6} MiB  {ratio_text(r)}")


def markdown(peak, results, e2e, blas, machine):
    """The results as the table of benchmarks/README.md."""
    lines = [f"{machine}; our side's BLAS: {blas}; numpy float32 matmul peak: {peak:.0f} GFLOP/s", "",
             "Rates: best repeat (median); the ratio likewise. Every side timed in a fresh process of its "
             "own, repeats alternating.", "",
             "| workload | impl | rate, best | rate, median | matmul GFLOP/s | % of numpy peak | peak memory "
             "| numpy / torch, best (median) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        memory = "" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f} MiB"
        ratio = f"**{ratio_text(r)}**" if ratio_text(r) else ""
        lines.append(f"| {r['workload']} | {label(r)} | {r['per_second']:.1f} {r['unit']} | "
                     f"{r['per_second_median']:.1f} | {r['gflops']:.0f} | {100 * r['fraction_of_peak']:.0f}% | "
                     f"{memory} | {ratio} |")
    for name, seconds in e2e.items():
        lines.append(f"\nEnd to end, `{name}`: {seconds:.1f} s")
    return "\n".join(lines) + "\n"


def end_to_end(args):
    """demos/toy2d.py at the lecture's defaults, and the same in PyTorch; wall seconds."""
    out = {}
    command = [sys.executable, os.path.join(ROOT, "demos", "toy2d.py"), "--no-window", "--no-progress",
               "--out", os.path.join(args.workdir, "toy2d")]
    for b in (["numpy", "cupy"] if args.gpu_e2e else ["numpy"]):
        start = time.perf_counter()
        env = {**os.environ, **({"OPENBLAS_CORETYPE": args.coretype} if args.coretype else {})}
        result = subprocess.run(command + ["--backend", b], capture_output=True, text=True, env=env)
        out[f"toy2d.py --backend {b}"] = time.perf_counter() - start
        print(f"demos/toy2d.py --backend {b} (lecture defaults): {out[f'toy2d.py --backend {b}']:.1f} s  "
              f"{result.stdout.strip().splitlines()[0] if result.returncode == 0 else result.stderr.strip()[-200:]}")
    if has_torch() and not args.no_torch:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "torch_toy2d.py")],
                                capture_output=True, text=True)
        out["torch_toy2d.py"] = time.perf_counter() - start
        print(f"benchmarks/torch_toy2d.py (the lecture's PyTorch, same defaults): {out['torch_toy2d.py']:.1f} s "
              f"{'' if result.returncode == 0 else result.stderr[-200:]}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer workloads and repeats")
    parser.add_argument("--e2e", action="store_true", help="also time demos/toy2d.py end to end")
    parser.add_argument("--gpu-e2e", action="store_true", help="with --e2e, also --backend cupy")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--backends", default="numpy,cupy",
                        help="comma-separated: numpy (with PyTorch on the CPU), cupy (with PyTorch on CUDA)")
    parser.add_argument("--only", help="only workloads whose name contains this")
    parser.add_argument("--json", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--markdown", help="also write the table as markdown to this file")
    parser.add_argument("--workdir", default="/tmp/numpy-ddpm-bench")
    parser.add_argument("--coretype", help="run our side on this OpenBLAS kernel (OPENBLAS_CORETYPE), "
                                           "e.g. Haswell: the AVX2 kernels on an AVX-512 machine")
    args = parser.parse_args()

    import numpy as np
    machine = cpu_description()
    print(f"{machine}, numpy {np.__version__}")
    if has_torch() and not args.no_torch:
        code = "import torch; print(torch.__version__, torch.get_num_threads())"
        result = subprocess.run([sys.executable, "-c", code],
                                capture_output=True, text=True)
        print(f"torch {result.stdout.strip()} threads (in its own process)")
    print(f"{'workload':<34} {'impl':<16} {'best':>9} {'median':>9} {'':<9} {'matmul':>7} {'':7} {'peak':>5} "
          f"{'memory':>6}      numpy/torch best (median)")
    peak, results, blas = run_all(args)
    kernels = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']} kernels, {b['num_threads']} threads"
                        for b in blas or [])
    print(f"\n{machine}; our side's BLAS: {kernels}")
    e2e = end_to_end(args) if args.e2e else {}
    with open(args.json, "w") as file:
        json.dump({"machine": {"cpu": machine, "cpus": os.cpu_count(), "numpy": np.__version__, "blas": blas,
                               "coretype": args.coretype, "matmul_peak_gflops": peak, "quick": args.quick},
                   "results": results, "end_to_end_seconds": e2e}, file, indent=1)
    print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(markdown(peak, results, e2e, kernels, machine))
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
