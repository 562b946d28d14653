"""Speed and memory of numpy-ddpm against PyTorch, side by side in one process.

    python benchmarks/bench.py              # every workload, a few minutes on 2 cores
    python benchmarks/bench.py --quick      # a smoke run, under a minute
    python benchmarks/bench.py --e2e        # also demos/toy2d.py at the lecture's defaults, and
                                            # the same script in PyTorch (several minutes)

Each workload runs on the numpy backend, on the cupy backend when a GPU is there, and in
PyTorch when it is installed (the PyTorch code mirrors the lecture's), one after the other
after a warm-up; times are medians of several repeats. Reported: steps/s (or samples/s),
achieved GFLOP/s of the matrix products, the fraction of numpy's own float32 matmul peak,
the peak memory added by the workload, and the ratio numpy / PyTorch. Results go to a JSON file.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from numpy_ddpm import backend  # noqa: E402
from numpy_ddpm.diffusion import generate, train_step  # noqa: E402
from numpy_ddpm.models import convnet, mlp  # noqa: E402
from numpy_ddpm.optim import EMA, Adam  # noqa: E402
from numpy_ddpm.schedule import Schedule  # noqa: E402

T = 1000


# Memory: the peak resident set added by a workload (Linux: clear_refs resets the peak) ----

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


# FLOPs of the matrix products (multiply-adds count 2) ---------------------------------------

def mlp_forward_flops(n, dim=2, hidden=256):
    return 2 * n * ((dim + 1) * hidden + 2 * hidden * hidden + hidden * dim)


def conv_forward_flops(n, h, w, channels=1, width=64, k=5):
    layers = [(channels + 1, width)] + [(width, width)] * 5 + [(width, channels)]
    return sum(2 * n * h * w * c_in * k * k * c_out for c_in, c_out in layers)


# Our implementation ---------------------------------------------------------------------------

def ours_train(make, shape):
    model, schedule = make(), Schedule()
    optimizer, ema = Adam(model.flat_parameters()), EMA(model.flat_parameters())
    rng = backend.default_rng(0)
    x0 = backend.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))

    def step():
        train_step(model, optimizer, x0, schedule, rng, ema)
    return step


def ours_sampling_steps(make, shape, nb_steps):
    """`nb_steps` steps of Algorithm 2 (the last nb_steps of the 1000)."""
    model = make()
    schedule = Schedule()
    rng = backend.default_rng(0)

    class Tail:       # the schedule seen from step nb_steps - 1 down to 0
        T = nb_steps
        host = schedule.host

        @staticmethod
        def network_time(t):
            return schedule.network_time(t)

    def run():
        generate(model, shape, Tail, rng)
    return run


def sync():
    if backend.name == "cupy":
        backend.xp.cuda.Stream.null.synchronize()


# PyTorch, mirroring the lecture's code ---------------------------------------------------------

def torch_models():
    import torch
    from torch import nn

    class TimeAppender(nn.Module):
        def forward(self, u):
            x, t = u
            if not torch.is_tensor(t):
                t = x.new_full((x.size(0),), t)
            t = t.view((-1,) + (1,) * (x.dim() - 1)).expand_as(x[:, :1])
            return torch.cat((x, t), 1)

    def torch_mlp(dim=2, nh=256):
        return nn.Sequential(TimeAppender(), nn.Linear(dim + 1, nh), nn.ReLU(), nn.Linear(nh, nh), nn.ReLU(),
                             nn.Linear(nh, nh), nn.ReLU(), nn.Linear(nh, dim))

    def torch_convnet(channels=1, nc=64, ks=5):
        layers = [TimeAppender(), nn.Conv2d(channels + 1, nc, ks, padding=ks // 2), nn.ReLU()]
        for _ in range(5):
            layers += [nn.Conv2d(nc, nc, ks, padding=ks // 2), nn.ReLU()]
        layers.append(nn.Conv2d(nc, channels, ks, padding=ks // 2))
        return nn.Sequential(*layers)
    return torch_mlp, torch_convnet


def torch_train_step(model, optimizer, ema, x0, alpha_bar):
    """The lecture's training step (Algorithm 1 with Adam), then the EMA of the weights."""
    import torch
    t = torch.randint(T, (x0.size(0),) + (1,) * (x0.dim() - 1), device=x0.device)
    eps = torch.randn_like(x0)
    xt = torch.sqrt(alpha_bar[t]) * x0 + torch.sqrt(1 - alpha_bar[t]) * eps
    output = model((xt, t / (T - 1) - 0.5))
    loss = (eps - output).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for average, p in zip(ema, model.parameters()):
            average.copy_(0.9999 * average + (1 - 0.9999) * p)


def torch_train(make, shape, device):
    import torch
    model = make().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ema = [p.detach().clone() for p in model.parameters()]
    beta = torch.linspace(1e-4, 0.02, T, device=device)
    alpha_bar = (1 - beta).log().cumsum(0).exp()
    x0 = torch.randn(shape, device=device)
    return lambda: torch_train_step(model, optimizer, ema, x0, alpha_bar)


def torch_sampling_steps(make, shape, nb_steps, device):
    import torch
    model = make().to(device)
    beta = torch.linspace(1e-4, 0.02, T, device=device)
    alpha = 1 - beta
    alpha_bar = alpha.log().cumsum(0).exp()
    sigma = beta.sqrt()

    def run():
        with torch.no_grad():
            x = torch.randn(shape, device=device)
            for t in range(nb_steps - 1, -1, -1):
                output = model((x, t / (T - 1) - 0.5))
                z = torch.zeros_like(x) if t == 0 else torch.randn_like(x)
                x = 1 / torch.sqrt(alpha[t]) * (x - (1 - alpha[t]) / torch.sqrt(1 - alpha_bar[t]) * output) \
                    + sigma[t] * z
    return run


# Measurement ------------------------------------------------------------------------------------

def measure(fn, calls, repeats, warmup, after=lambda: None):
    """Median seconds per call of fn."""
    for _ in range(warmup):
        fn()
    after()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        after()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def peak_memory(index, impl):
    """Peak resident memory (MiB) that workload `index` adds to a fresh process, for `impl`
    ("numpy" or "torch-cpu"): building the model and three calls, above the imports."""
    result = subprocess.run([sys.executable, __file__, "--memory-of", str(index), impl],
                            capture_output=True, text=True)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def memory_child(index, impl):
    if impl.startswith("torch"):
        import torch  # noqa: F401  (imported before the baseline, as numpy is)
    name, kind, make_ours, make_torch, *_ = workloads(quick=False)[index]
    baseline = reset_peak()
    fn = make_torch("cpu") if impl.startswith("torch") else make_ours()
    for _ in range(3):
        fn()
    print(peak_added_mib(baseline))


def matmul_peak(quick):
    n = 1024 if quick else 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(3))
    return 2 * n ** 3 / best / 1e9


def _timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def workloads(quick):
    """(name, kind, make ours, make torch, shape, flops per call, calls, repeats, items per call)."""
    torch_mlp, torch_convnet = torch_models() if has_torch() else (None, None)
    sample_steps = 5 if quick else 20
    rows = [
        ("MLP train step, batch 25", "train", lambda: ours_train(lambda: mlp(2), (25, 2)),
         lambda d: torch_train(torch_mlp, (25, 2), d), 3 * mlp_forward_flops(25), 200 if quick else 1000, 5, 1),
        ("MLP train step, batch 1024", "train", lambda: ours_train(lambda: mlp(2), (1024, 2)),
         lambda d: torch_train(torch_mlp, (1024, 2), d), 3 * mlp_forward_flops(1024), 20 if quick else 100, 5, 1),
        ("MLP sampling, 1000 points", "sample", lambda: ours_sampling_steps(lambda: mlp(2), (1000, 2), 100),
         lambda d: torch_sampling_steps(torch_mlp, (1000, 2), 100, d), 100 * mlp_forward_flops(1000),
         1, 3 if quick else 5, 1000 * 100 / T),
    ]
    for h, n in ((8, 25), (8, 128), (28, 25), (28, 128)):
        if quick and (h, n) != (8, 25):
            continue
        rows.append((f"Conv train step, {h}x{h}, batch {n}", "train",
                     lambda h=h, n=n: ours_train(lambda: convnet(1), (n, 1, h, h)),
                     lambda d, h=h, n=n: torch_train(torch_convnet, (n, 1, h, h), d),
                     3 * conv_forward_flops(n, h, h), 3 if quick or h == 28 else 10, 3, 1))
    for h, n in ((8, 64), (28, 16)):
        if quick and h == 28:
            continue
        rows.append((f"Conv sampling, {n} images {h}x{h}", "sample",
                     lambda h=h, n=n: ours_sampling_steps(lambda: convnet(1), (n, 1, h, h), sample_steps),
                     lambda d, h=h, n=n: torch_sampling_steps(torch_convnet, (n, 1, h, h), sample_steps, d),
                     sample_steps * conv_forward_flops(n, h, h), 1, 3, n * sample_steps / T))
    return rows


def has_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def torch_device(ours_backend):
    import torch
    if ours_backend == "cupy" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def run_all(args):
    backends = []
    if "numpy" in args.backends:
        backends.append("numpy")
    if "cupy" in args.backends:
        try:
            backend.use("cupy")
            backends.append("cupy")
        except backend.BackendError as error:
            print(f"(no GPU rows: {error})")
        finally:
            backend.use("numpy")

    peak = matmul_peak(args.quick)
    print(f"numpy float32 matmul peak: {peak:.0f} GFLOP/s\n")
    results = []
    for name, kind, make_ours, make_torch, flops, calls, repeats, items in workloads(args.quick):
        if args.only and args.only not in name:
            continue
        index = [w[0] for w in workloads(False)].index(name)
        for b in backends:
            backend.use(b)
            # one BLAS thread for the MLP at batch 25, as demos/toy2d.py trains it
            with backend.blas_threads(1 if name == "MLP train step, batch 25" else None):
                seconds = measure(make_ours(), calls, repeats, warmup=2 if kind == "sample" else 5, after=sync)
            memory = peak_memory(index, b) if b == "numpy" and not args.quick else None
            results.append(row(name, kind, b, seconds, memory, flops, items, peak))
            print_row(results[-1])
            backend.use("numpy")
            if has_torch() and not args.no_torch:
                import torch
                device = torch_device(b)
                after = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                seconds = measure(make_torch(device), calls, repeats,
                                  warmup=2 if kind == "sample" else 5, after=after)
                memory = peak_memory(index, "torch-cpu") if device == "cpu" and not args.quick else None
                results.append(row(name, kind, f"torch-{device}", seconds, memory, flops, items, peak))
                results[-1]["ours_over_torch"] = results[-2]["per_second"] / results[-1]["per_second"]
                print_row(results[-1])
    return peak, results


def row(name, kind, impl, seconds, memory, flops, items, peak):
    per_second = items / seconds
    gflops = flops / seconds / 1e9
    return {"workload": name, "impl": impl, "unit": "steps/s" if kind == "train" else "samples/s",
            "per_second": per_second, "gflops": gflops, "fraction_of_peak": gflops / peak,
            "peak_memory_mib": memory}


def print_row(r):
    memory = "n/a" if r["peak_memory_mib"] is None or r["impl"].endswith("cuda") or r["impl"] == "cupy" \
        else f"{r['peak_memory_mib']:.0f}"
    ratio = f"{r['ours_over_torch']:.2f}" if "ours_over_torch" in r else ""
    print(f"{r['workload']:<34} {r['impl']:<10} {r['per_second']:>10.1f} {r['unit']:<9} "
          f"{r['gflops']:>7.1f} GFLOP/s {100 * r['fraction_of_peak']:>5.0f}% {memory:>6} MiB  {ratio}")


def markdown(peak, results, e2e, blas):
    """The results as the table of benchmarks/README.md."""
    lines = [f"numpy float32 matmul peak: {peak:.0f} GFLOP/s (BLAS: {blas})", "",
             "| workload | impl | rate | matmul GFLOP/s | % of numpy peak | peak memory | numpy / torch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        memory = "" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f} MiB"
        ratio = f"**{r['ours_over_torch']:.2f}**" if "ours_over_torch" in r else ""
        lines.append(f"| {r['workload']} | {r['impl']} | {r['per_second']:.1f} {r['unit']} | {r['gflops']:.0f} | "
                     f"{100 * r['fraction_of_peak']:.0f}% | {memory} | {ratio} |")
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
        result = subprocess.run(command + ["--backend", b], capture_output=True, text=True)
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
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results.json"))
    parser.add_argument("--markdown", help="also write the table as markdown to this file")
    parser.add_argument("--workdir", default="/tmp/numpy-ddpm-bench")
    parser.add_argument("--memory-of", nargs=2, metavar=("INDEX", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        return memory_child(int(args.memory_of[0]), args.memory_of[1])

    from threadpoolctl import threadpool_info
    blas = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"BLAS {blas}")
    if has_torch():
        import torch
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'workload':<34} {'impl':<10} {'rate':>10} {'':<9} {'matmul':>7} {'':7} {'peak':>5} "
          f"{'memory':>6}      numpy/torch")
    peak, results = run_all(args)
    e2e = end_to_end(args) if args.e2e else {}
    with open(args.json, "w") as file:
        json.dump({"machine": {"cpus": os.cpu_count(), "numpy": np.__version__, "blas": blas,
                               "matmul_peak_gflops": peak, "quick": args.quick},
                   "results": results, "end_to_end_seconds": e2e}, file, indent=1)
    print(f"\nwrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(markdown(peak, results, e2e, blas))
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
