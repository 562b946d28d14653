"""Page faults per call of each benchmark workload, in a fresh process that uses the library as
a library (nothing set up first): what a training step or a sampling run costs the kernel in
fresh pages. A step whose temporaries come back from the allocator faults ~0 times.

    python benchmarks/page_faults.py [--only TEXT] [--calls 10]
"""

import argparse
import json
import os
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def child(index, algorithm, calls):
    sys.path.insert(0, HERE)
    from workloads import workloads
    workload = workloads(quick=False)[index]
    fn = workload.ours(None if algorithm == "auto" else algorithm)
    for _ in range(workload.warmup):
        fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="only workloads whose name contains this")
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    from workloads import workloads
    for index, workload in enumerate(workloads(quick=False)):
        if args.only and args.only not in workload.name:
            continue
        for algorithm in workload.algorithms:
            result = subprocess.run([sys.executable, __file__, "child", str(index), algorithm or "auto",
                                     str(args.calls)], capture_output=True, text=True, check=True)
            faults = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{workload.name:<34} {algorithm or '':<9} {faults:>10.1f} faults per call")


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
