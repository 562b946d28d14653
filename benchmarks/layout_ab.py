"""Two trees side by side (before and after a change): each workload of workloads.py in a fresh
worker process per tree (its own harness.py and package on PYTHONPATH), repeats alternating.

    git worktree add /tmp/before <commit>
    python benchmarks/layout_ab.py /tmp/before .          # a markdown row per workload and algorithm

Used for the package's move into layers (issue 21): before 3926ea0, after it.
"""
import json
import os
import statistics
import subprocess
import sys
TREES = {"before": os.path.abspath(sys.argv[1]), "after": os.path.abspath(sys.argv[2])}
sys.path.insert(0, os.path.join(TREES["after"], "benchmarks"))
from workloads import workloads  # noqa: E402

def worker(tree, index, algorithm):
    root = TREES[tree]
    p = subprocess.Popen([sys.executable, f"{root}/benchmarks/harness.py", "worker", "numpy", str(index), "0",
                          algorithm], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": root}, cwd=root)
    info = json.loads(p.stdout.readline())
    return p, info

def time(p, calls):
    p.stdin.write(f"{calls}\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())

results = []
for index, w in enumerate(workloads(False)):
    for algorithm in w.algorithms:
        procs = {tree: worker(tree, index, algorithm or "auto") for tree in TREES}
        times = {tree: [] for tree in TREES}
        for _ in range(w.repeats):
            for tree in TREES:
                times[tree].append(time(procs[tree][0], w.calls))
        for p, _ in procs.values():
            p.stdin.close()
            p.wait()
        row = {tree: (min(t), statistics.median(t)) for tree, t in times.items()}
        kernel = procs["after"][1]["blas"][0].get("architecture")
        line = (f"| {w.name} | {algorithm or ''} | {row['before'][0]*1e3:.3f} / {row['before'][1]*1e3:.3f} | "
                f"{row['after'][0]*1e3:.3f} / {row['after'][1]*1e3:.3f} | {row['after'][0]/row['before'][0]:.3f} | "
                f"{row['after'][1]/row['before'][1]:.3f} |")
        print(line, flush=True)
        results.append({"workload": w.name, "algorithm": algorithm, "times": times, "kernel": kernel})
print(json.dumps(results))
