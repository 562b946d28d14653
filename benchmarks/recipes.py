"""The lecture's toy configuration against `--recipe fast`: quality and wall time, side by side.

    python benchmarks/recipes.py                                  # ten sets, seeds 0 1 2
    python benchmarks/recipes.py --sets spiral,moons --seeds 0    # a subset
    python benchmarks/recipes.py --report --import-log runs/recipes/lecture.txt --markdown T.md --plot P.png
                                  # no runs: the JSON's, and the lecture's earlier ones untimed

Each run is `demos/toy2d.py` in a fresh process, as a user runs it, with 5000 generated points;
the two configurations alternate (lecture, fast, lecture, ...) so that a drift of the machine
touches both. Reported per set: distance / floor (sliced Wasserstein-1 in 2-D, exact W1 in 1-D,
5000 generated points against 5000 fresh ones; see numpy_ddpm/metrics.py), median over the
seeds, and the median time of a run (training and sampling, by the demo's own clock; the JSON
also keeps the whole process's). Writes a markdown table, a JSON record and a plot of quality
against time. Time nothing else on the machine meanwhile.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = ("gaussian_mixture", "ramp", "two_discs", "disc_grid", "spiral",
        "moons", "swiss_roll", "eight_gaussians", "checkerboard", "circles")
CONFIGS = {"lecture": [], "fast": ["--recipe", "fast"]}


def run_demo(name, seed, config, args):
    """One demo run: {'ratio', 'wall', 'train', 'sample'} parsed from what it prints."""
    out = os.path.join(args.out, config, f"{name}-{seed}")
    command = [sys.executable, os.path.join(ROOT, "demos", "toy2d.py"), "--data", name, "--seed", str(seed),
               "--nb-generated", str(args.nb_generated), "--no-window", "--no-progress", "--no-bound",
               "--out", out] + CONFIGS[config]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    ratio = re.search(r"distance / floor = ([0-9.]+)", result.stdout)
    timing = re.search(r"trained in ([0-9.]+) s, sampled in ([0-9.]+) s", result.stdout)
    return {"set": name, "seed": seed, "config": config, "ratio": float(ratio.group(1)), "wall": wall,
            "train": float(timing.group(1)) if timing else None,
            "sample": float(timing.group(2)) if timing else None}


def import_log(path, runs):
    """Untimed lecture runs from a log of lines 'SET SEED distance / floor = R ...', for the sets
    and seeds not in `runs`; where `runs` has one, its quality must be the log's (a run's
    quality depends only on its set and seed, not on the machine's load)."""
    known = {(r["set"], r["seed"], r["config"]): r["ratio"] for r in runs}
    imported = []
    with open(path) as file:
        for line in file:
            match = re.match(r"(\w+) (\d+) distance / floor = ([0-9.]+)", line)
            if not match:
                continue
            key, ratio = (match.group(1), int(match.group(2)), "lecture"), float(match.group(3))
            if key in known and known[key] != ratio:
                print(f"warning: {key[0]} seed {key[1]} lecture: {known[key]:.2f} measured, {ratio:.2f} in {path}",
                      file=sys.stderr)
            if key not in known:
                imported.append({"set": key[0], "seed": key[1], "config": "lecture", "ratio": ratio,
                                 "wall": None, "train": None, "sample": None})
    return imported


def seconds(run):
    """Training + sampling seconds of a run, by the demo's own clock (None: not timed)."""
    return None if run["train"] is None else run["train"] + run["sample"]


def median_seconds(runs):
    """(median seconds over the timed ones of `runs`, or nan, how many were timed)."""
    times = [t for t in map(seconds, runs) if t is not None]
    return (statistics.median(times) if times else float("nan")), len(times)


def summary(runs):
    """{(set, config): (median distance / floor, median seconds or nan)}"""
    table = {}
    for key in sorted({(r["set"], r["config"]) for r in runs}):
        chosen = [r for r in runs if (r["set"], r["config"]) == key]
        table[key] = (statistics.median(r["ratio"] for r in chosen), median_seconds(chosen)[0])
    return table


def overall_time(runs, config):
    """(median seconds over the timed runs of `config`, how many)."""
    return median_seconds([r for r in runs if r["config"] == config])


def markdown(runs, table, sets, seeds):
    """The table of both configurations, set by set, and the time ratio of their medians."""
    (lecture_s, nl), (fast_s, nf) = overall_time(runs, "lecture"), overall_time(runs, "fast")

    def ratios(name, config):
        values = [r["ratio"] for r in sorted(runs, key=lambda r: r["seed"])
                  if (r["set"], r["config"]) == (name, config)]
        return f"{', '.join(f'{v:.2f}' for v in values)} (**{table[name, config][0]:.2f}**)"

    def time_of(name, config):
        value = table[name, config][1]
        return "" if value != value else f"{value:.1f}"          # nan: not timed

    lines = [f"distance / floor with 5000 generated points for seeds {', '.join(map(str, seeds))} "
             "(median in bold); seconds: training + sampling by the demo's own clock, median over the "
             "timed runs of the set (blank: its runs were not timed).", "",
             "| set | lecture: distance / floor | fast: distance / floor | fast as good? | lecture s | fast s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in sets:
        if (name, "lecture") not in table or (name, "fast") not in table:
            continue
        good = "yes" if table[name, "fast"][0] <= table[name, "lecture"][0] else "no"
        lines.append(f"| {name} | {ratios(name, 'lecture')} | {ratios(name, 'fast')} | {good} | "
                     f"{time_of(name, 'lecture')} | {time_of(name, 'fast')} |")
    lines += ["", f"Median training + sampling time: lecture {lecture_s:.1f} s ({nl} runs), fast {fast_s:.1f} s "
                  f"({nf} runs): **{lecture_s / fast_s:.1f}x**."]
    return "\n".join(lines) + "\n"


def plot(runs, table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for config, marker in (("lecture", "o"), ("fast", "s")):
        overall = overall_time(runs, config)[0]           # for a set whose runs were not timed
        points = [(value[1] if value[1] == value[1] else overall, value[0], name)
                  for (name, c), value in table.items() if c == config]
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=config)
        for x, y, name in points:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training + sampling time (s)")
    ax.set_ylabel("distance / floor (median of seeds)")
    ax.axhline(1, color="grey", linewidth=0.5)
    ax.legend()
    ax.set_title("toy sets: the lecture's configuration against --recipe fast")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def selection_parser(description):
    """A parser with the runs to take: --sets, --seeds and --configs (recipe_noise.py's too)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--configs", default="lecture,fast")
    return parser


def main():
    parser = selection_parser(__doc__.splitlines()[0])
    parser.add_argument("--nb-generated", type=int, default=5000)
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "recipes"))
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "recipes.json"))
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument("--plot", help="write the quality-against-time plot to this PNG")
    parser.add_argument("--keep", action="store_true", help="reuse the runs already in --json")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: tabulate the runs in --json (implies --keep)")
    parser.add_argument("--import-log", metavar="FILE",
                        help="add the quality of earlier lecture runs, untimed, from lines "
                             "'SET SEED distance / floor = R ...' "
                             "(for the sets and seeds the JSON lacks; checked against those it has)")
    args = parser.parse_args()
    sets, seeds, configs = args.sets.split(","), [int(s) for s in args.seeds.split(",")], args.configs.split(",")
    runs = []
    if (args.keep or args.report) and os.path.exists(args.json):
        with open(args.json) as file:
            runs = json.load(file)["runs"]
    if args.import_log:
        runs += import_log(args.import_log, runs)
    done = {(r["set"], r["seed"], r["config"]) for r in runs}
    for seed in [] if args.report else seeds:
        for name in sets:
            for config in configs:
                if (name, seed, config) in done:
                    continue
                runs.append(run_demo(name, seed, config, args))
                r = runs[-1]
                print(f"{name:16s} seed {seed} {config:8s} distance/floor {r['ratio']:.2f}  "
                      f"train+sample {r['train'] + r['sample'] if r['train'] is not None else float('nan'):.1f} s  "
                      f"process {r['wall']:.1f} s", flush=True)
                with open(args.json, "w") as file:
                    json.dump({"runs": runs}, file, indent=1)
    table = summary(runs)
    text = markdown(runs, table, sets, seeds)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(text)
    if args.plot:
        plot(runs, table, args.plot)


if __name__ == "__main__":
    main()
