"""Sample quality against sampling steps: DDPM (Algorithm 2, all 1000 steps), DDIM (10, 20, 50,
100, 200 steps, eta 0 and 1) and DPM-Solver++ (2M and 3M, 5 to 50 steps) from the same trained
toy models, and from image models (the 8x8 digits of demos/mnist.py).

    python benchmarks/ddim_steps.py runs/ddim/spiral/checkpoint.npz runs/ddim/two_discs/checkpoint.npz
    python benchmarks/ddim_steps.py runs/mnist/checkpoint.npz --nb-generated 148  # digits: FD / floor
    python benchmarks/ddim_steps.py --train spiral two_discs      # trains them first (the lecture's
                                                                  # configuration, demos/toy2d.py)

For each checkpoint (EMA weights), 5000 points from each sampler: the sliced Wasserstein
distance to fresh data over its floor (metrics.distance_to_data; 1 = as close as another draw
of the data) and the seconds the sampling took, one sampler after the other in this process.
For an image model (digits), the Fréchet distance in our digit classifier's features over its
floor instead (evaluation/quality.py: min(N, 148) samples against as many of the 297 held-out
digits, 10 draws; 148 samples use all it can).
One draw's ratio moves by several tenths with the seed (on two_discs mostly through the share
of points in each disc), so --seeds 0,1,2 reports the mean and the range over seeds.
Writes into --out: ddim_steps.md (the table), ddim_steps.json and ddim_steps.png (distance /
floor against the number of steps). Timings mean something only on an otherwise idle machine.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from numpy_ddpm import backend, cpu, data  # noqa: E402
from numpy_ddpm.diffusion import ddim_generate, generate  # noqa: E402
from numpy_ddpm.diffusion.dpm_solver import dpm_solver_generate  # noqa: E402
from numpy_ddpm.evaluation import metrics, quality  # noqa: E402
from numpy_ddpm.likelihood import load_model  # noqa: E402
from numpy_ddpm.schedule import Schedule  # noqa: E402


def samplers(steps, etas, dpm_steps=(), dpm_orders=()):
    """[(label, nb_steps, eta, draw)] with draw(model, shape, schedule, rng) -> samples (eta None:
    no DDIM eta; DPM-Solver++ rows are labelled by their order)."""
    rows = [("DDPM", 1000, None, lambda m, shape, s, rng: generate(m, shape, s, rng))]
    for eta in etas:
        for S in steps:
            rows.append((f"DDIM eta={eta:g}", S, eta,
                         lambda m, shape, s, rng, S=S, eta=eta: ddim_generate(m, shape, s, rng, nb_steps=S, eta=eta)))
    for order in dpm_orders:
        for S in dpm_steps:
            rows.append((f"DPM-Solver++ {order}M", S, None,
                         lambda m, shape, s, rng, S=S, k=order: dpm_solver_generate(m, shape, s, rng, nb_steps=S,
                                                                                     order=k)))
    return rows


def distance_and_floor(x, name, seed):
    """(distance, floor) of samples x in the data's scale: the sliced Wasserstein distance to
    fresh toy data, or for images the Fréchet distance to the held-out images."""
    if name not in data.IMAGES:
        return metrics.distance_to_data(x, name, seed=12345 + 2 * seed)
    result = quality.report(x, name)
    return result["fd"], result["floor"]


def measure(path, nb_generated, steps, etas, seeds, dpm_steps=(), dpm_orders=()):
    model, meta, nb_classes = load_model(path)
    if nb_classes is not None:
        raise SystemExit(f"{path} holds a conditional model; this measures unconditional ones")
    schedule, name = Schedule(), meta["data"]
    shape = (nb_generated,) + (data.images(name, 1).shape[1:] if name in data.IMAGES else (2,))
    rows = []
    for label, S, eta, draw in samplers(steps, etas, dpm_steps, dpm_orders):
        for seed in seeds:
            rng = backend.default_rng(seed, 1_000_003)
            start = time.perf_counter()
            x = backend.to_numpy(draw(model, shape, schedule, rng))
            seconds = time.perf_counter() - start
            distance, floor = distance_and_floor(x * meta["std"] + meta["mean"], name, seed)
            rows.append({"data": name, "sampler": label, "steps": S, "eta": eta, "seed": seed, "distance": distance,
                         "floor": floor, "ratio": distance / floor, "seconds": seconds})
            print(f"{name:<10} {label:<12} {S:>5} steps  seed {seed}  distance / floor {distance / floor:6.2f}  "
                  f"{seconds:7.2f} s", flush=True)
    return rows


def summary(rows):
    """One row per (data, sampler, steps): mean ratio, its range over seeds, mean seconds."""
    groups = {}
    for row in rows:
        groups.setdefault((row["data"], row["sampler"], row["steps"], row["eta"]), []).append(row)
    return [{"data": d, "sampler": s, "steps": S, "eta": eta,
             "ratio": sum(r["ratio"] for r in group) / len(group),
             "low": min(r["ratio"] for r in group), "high": max(r["ratio"] for r in group),
             "seconds": sum(r["seconds"] for r in group) / len(group)}
            for (d, s, S, eta), group in groups.items()]


def table(rows):
    lines = ["| data | sampler | steps | distance / floor (range over seeds) | sampling time (s) | speed-up vs DDPM |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        ddpm = next(r for r in rows if r["data"] == row["data"] and r["sampler"] == "DDPM")
        spread = f" ({row['low']:.2f} to {row['high']:.2f})" if row["high"] > row["low"] else ""
        lines.append(f"| {row['data']} | {row['sampler']} | {row['steps']} | {row['ratio']:.2f}{spread} | "
                     f"{row['seconds']:.2f} | {ddpm['seconds'] / row['seconds']:.1f}x |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    names = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        mine = [r for r in rows if r["data"] == name]
        for eta, marker in sorted({(r["eta"], "o" if r["eta"] == 0 else "s") for r in mine if r["eta"] is not None}):
            ddim = sorted((r for r in mine if r["eta"] == eta), key=lambda r: r["steps"])
            ax.errorbar([r["steps"] for r in ddim], [r["ratio"] for r in ddim], capsize=3, marker=marker,
                        yerr=[[r["ratio"] - r["low"] for r in ddim], [r["high"] - r["ratio"] for r in ddim]],
                        label=f"DDIM, eta = {eta:g}")
        for order, marker in ((2, "^"), (3, "v")):
            dpm = sorted((r for r in mine if r["sampler"] == f"DPM-Solver++ {order}M"), key=lambda r: r["steps"])
            if dpm:
                ax.errorbar([r["steps"] for r in dpm], [r["ratio"] for r in dpm], capsize=3, marker=marker,
                            yerr=[[r["ratio"] - r["low"] for r in dpm], [r["high"] - r["ratio"] for r in dpm]],
                            label=f"DPM-Solver++ {order}M")
        ddpm = next(r for r in mine if r["sampler"] == "DDPM")
        ax.errorbar([ddpm["steps"]], [ddpm["ratio"]], fmt="k*", markersize=12, capsize=3, label="DDPM (Algorithm 2)",
                    yerr=[[ddpm["ratio"] - ddpm["low"]], [ddpm["high"] - ddpm["ratio"]]])
        ax.axhline(1, color="gray", linestyle=":", label="floor (another draw of the data)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_yticks([1, 1.5, 2, 3, 5, 10], ["1", "1.5", "2", "3", "5", "10"], minor=False)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("sampling steps (network evaluations)")
        ax.set_ylabel("FD / floor" if name in data.IMAGES else "sliced Wasserstein distance / floor")
        ax.set_title(name)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="checkpoint.npz of toy2d.py runs (2-D sets) or mnist.py runs")
    parser.add_argument("--train", nargs="*", default=[], metavar="DATA",
                        help="first train these sets with demos/toy2d.py at its defaults, into --out/DATA")
    parser.add_argument("--nb-generated", type=int, default=5000)
    parser.add_argument("--steps", default="10,20,50,100,200", help="DDIM step counts")
    parser.add_argument("--etas", default="0,1")
    parser.add_argument("--dpm-steps", default="5,10,15,20,50", help="DPM-Solver++ step counts")
    parser.add_argument("--dpm-orders", default="2,3", help="DPM-Solver++ orders (empty: none)")
    parser.add_argument("--seeds", default="0", help="noise seeds, each with its own fresh data for the distance")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's)")
    parser.add_argument("--out", default="runs/ddim")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    etas = [float(e) for e in args.etas.split(",")]
    os.makedirs(args.out, exist_ok=True)
    checkpoints = list(args.checkpoints)
    for name in args.train:
        out = os.path.join(args.out, name)
        subprocess.run([sys.executable, os.path.join(ROOT, "demos", "toy2d.py"), "--data", name, "--no-window",
                        "--no-progress", "--out", out], check=True)
        checkpoints.append(os.path.join(out, "checkpoint.npz"))
    if not checkpoints:
        parser.error("give checkpoints, or --train with data set names")
    rows = []
    with cpu.blas_threads(args.threads):
        for path in checkpoints:
            rows += measure(path, args.nb_generated, steps, etas, [int(s) for s in args.seeds.split(",")],
                            [int(s) for s in args.dpm_steps.split(",") if s],
                            [int(k) for k in args.dpm_orders.split(",") if k])
    rows, per_seed = summary(rows), rows
    with open(os.path.join(args.out, "ddim_steps.md"), "w") as file:
        file.write(table(rows))
    with open(os.path.join(args.out, "ddim_steps.json"), "w") as file:
        json.dump({"summary": rows, "per_seed": per_seed}, file, indent=1)
    plot(rows, os.path.join(args.out, "ddim_steps.png"))
    print(table(rows))
    print(f"wrote {args.out}/ddim_steps.md, ddim_steps.json, ddim_steps.png")


if __name__ == "__main__":
    main()
