"""The toy demo as a user runs it: the whole process of `demos/toy2d.py` (the lecture's
configuration) against `demos/toy2d.py --recipe fast`, and where each one's time goes.

    python benchmarks/toy_process.py                        # 3 runs of each, alternating
    python benchmarks/toy_process.py --repeats 5 --data two_discs
    OPENBLAS_CORETYPE=Haswell python benchmarks/toy_process.py   # OpenBLAS's AVX2 kernels

Wall time: each run is `python demos/toy2d.py ...` in a fresh process, timed from outside
(interpreter start to exit: imports, training, sampling, the metric, the bound, the figures),
the two configurations alternating so that a drift of the machine touches both; reported as
minimum and median, and their ratio. Where the time goes: one more run of each in a process
that wraps the demo's phases in timers (the wrapping costs microseconds), the imports timed
from interpreter start. The BLAS kernels (threadpoolctl) and the CPU are named beside the
table. Writes --json. Time nothing else on the machine meanwhile.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"lecture": [], "fast": ["--recipe", "fast"]}

# Run inside the child of a phase breakdown: time the demo's phases by wrapping the functions
# it calls, then run it as `python demos/toy2d.py` would.
PHASES = r"""
import json, runpy, sys, time
start = time.perf_counter()
phases = {}
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/demos")
import toy2d                                    # the demo's imports: numpy_ddpm, matplotlib, tqdm
phases["imports"] = time.perf_counter() - start

def timed(module, name, phase):
    function = getattr(module, name)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - begin
    setattr(module, name, wrapper)

from numpy_ddpm.app import experiment
from numpy_ddpm.evaluation import plots
timed(experiment.Trainer, "fit", "training")
timed(experiment, "draw", "sampling")
timed(plots, "loss_curve", "figures")
timed(toy2d.metrics, "distances_to_data", "metric")
timed(toy2d.likelihood, "report", "bound (with bound.png)")
timed(toy2d.plots, "points", "figures")
sys.argv = ["toy2d.py"] + sys.argv[2:]
toy2d.main()
phases["total"] = time.perf_counter() - start
print("PHASES " + json.dumps(phases))
"""


def demo_command(config, args):
    return [os.path.join(ROOT, "demos", "toy2d.py"), "--data", args.data, "--no-window", "--no-progress",
            "--out", os.path.join(args.out, config)] + CONFIGS[config]


def wall(config, args):
    """Seconds of one whole demo process."""
    start = time.perf_counter()
    subprocess.run([sys.executable] + demo_command(config, args), check=True, capture_output=True)
    return time.perf_counter() - start


def phases(config, args):
    """{phase: seconds} of one run, by the wrapped demo."""
    command = [sys.executable, "-c", PHASES, ROOT] + demo_command(config, args)[1:]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("PHASES "))
    return json.loads(line[len("PHASES "):])


def machine():
    """The CPU's name and the BLAS that numpy loads in a fresh process (threadpoolctl)."""
    code = ("import json, numpy, threadpoolctl; print(json.dumps([{k: i.get(k) for k in "
            "('internal_api', 'version', 'architecture', 'num_threads')} for i in "
            "threadpoolctl.threadpool_info() if i.get('user_api') == 'blas']))")
    blas = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                     text=True).stdout)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
            file.seek(0)
            flags = next(line for line in file if line.startswith("flags")).split()
        cpu += ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "blas": blas,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="spiral")
    parser.add_argument("--repeats", type=int, default=3, help="whole-process runs of each configuration")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "toy_process"))
    parser.add_argument("--json", default=os.path.join(ROOT, "runs", "toy_process", "toy_process.json"))
    args = parser.parse_args()
    about = machine()
    blas = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']} kernels, {b['num_threads']} threads"
                     for b in about["blas"])
    print(f"{about['cpu']}, {about['cores']} cores; {blas}", flush=True)
    times = {config: [] for config in CONFIGS}
    for repeat in range(args.repeats):
        for config in CONFIGS:
            times[config].append(wall(config, args))
            print(f"run {repeat + 1}: {config:<8} {times[config][-1]:7.1f} s", flush=True)
    breakdown = {config: phases(config, args) for config in CONFIGS}
    for parts in breakdown.values():        # what no wrapped phase covers: the run's set-up, the data, saving
        parts["rest"] = parts["total"] - sum(seconds for name, seconds in parts.items() if name != "total")
    summary = {config: {"min": min(t), "median": statistics.median(t), "runs": t} for config, t in times.items()}
    print("\n| | lecture | fast | fast / lecture |\n|---|---|---|---|")
    for stat in ("min", "median"):
        lecture, fast = summary["lecture"][stat], summary["fast"][stat]
        print(f"| whole process, {stat} of {args.repeats} | {lecture:.1f} s | {fast:.1f} s | {fast / lecture:.3f} |")
    names = list(dict.fromkeys(name for config in CONFIGS for name in breakdown[config]))
    for name in names:
        lecture, fast = (breakdown[config].get(name) for config in CONFIGS)
        cell = lambda s: "-" if s is None else f"{s:.2f} s"       # noqa: E731
        print(f"| {name} (one run) | {cell(lecture)} | {cell(fast)} | |")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as file:
        json.dump({"machine": about, "data": args.data, "wall": summary, "phases": breakdown}, file, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
