"""How much of recipes.py's table is noise: the score of a perfect sampler, and each trained
model's score over more draws of its samples.

    python benchmarks/recipe_noise.py                       # both parts, all sets, 4 draws a model
    python benchmarks/recipe_noise.py --draws 8 --configs fast --markdown T.md
    python benchmarks/recipe_noise.py --report --markdown T.md --plot benchmarks/recipe_noise.png
                                                            # tabulate and plot the JSON, run nothing

recipes.py scores a run by distance / floor on one draw of 5000 generated points (metrics.py:
the distance to a fixed reference draw of the data, over the distance of a second draw to it).
Two things move that number besides the model:

- **The perfect sampler's spread.** Fresh draws of the data itself, scored the same way, do
  not score 1: how many of 5000 points fall in each mode varies from draw to draw, and the
  sliced Wasserstein distance pays for every point moved between modes. Reported per set: the
  median and the 5-95% range of 300 such draws, and the range of a median of 3 (recipes.py's
  statistic) over 100 triples.
- **The sampling noise of one model.** Each checkpoint of recipes.py's runs
  (runs/recipes/CONFIG/SET-SEED/checkpoint.npz) draws `--draws` batches of 5000 points with its
  own sampler: the demo's draw (which must reproduce recipes.json's score) and others from
  other noise seeds. Their mean is the model's expected score.

The verdict compares the two configurations' expected scores (the mean over their seeds of
each model's mean), with the standard error of the difference from the spread of the seeds'
means: the seed is the unit, since the draws of one model share its errors.
"""

import importlib.util
import json
import math
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from recipes import CONFIGS, selection_parser  # noqa: E402

from numpy_ddpm import backend, data  # noqa: E402
from numpy_ddpm.app import cli  # noqa: E402
from numpy_ddpm.app.experiment import draw, train_config  # noqa: E402
from numpy_ddpm.app.train import Trainer  # noqa: E402
from numpy_ddpm.evaluation import metrics  # noqa: E402
from numpy_ddpm.models import mlp  # noqa: E402
from numpy_ddpm.schedule import Schedule  # noqa: E402

N = 5000                  # points per draw, as recipes.py's runs generate


def toy2d_demo():
    """demos/toy2d.py as a module, for its parser (the flags of each configuration)."""
    spec = importlib.util.spec_from_file_location("toy2d", os.path.join(ROOT, "demos", "toy2d.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def perfect_sampler(name, nb_draws=300):
    """Scores of `nb_draws` fresh draws of the data (seeds 1000, 1001, ...) against the
    metric's reference and floor: what a sampler of the true distribution would score."""
    reference, other = metrics.fresh_draws(name, N)
    floor = metrics.sliced_wasserstein(other, reference)
    return [metrics.sliced_wasserstein(data.toy(name, N, seed=1000 + k), reference) / floor
            for k in range(nb_draws)]


def model_scores(run_dir, args, nb_draws):
    """Scores of `nb_draws` draws of N points from the run's EMA weights: draw 0 with the demo's
    own noise seed, draw k with the seed (seed, 2_000_003, k)."""
    dim = data.toy(args.data, 1).shape[1]
    model = mlp(dim, hidden=args.hidden, seed=args.seed)
    schedule = Schedule()
    trainer = Trainer(model, schedule, train_config(args))
    saved = trainer.load(os.path.join(run_dir, "checkpoint.npz"))
    trainer.finish()
    scores = []
    for k in range(nb_draws):
        keys = (args.seed, 1_000_003) if k == 0 else (args.seed, 2_000_003, k)
        generated = backend.to_numpy(draw(args, model, schedule, (N, dim), backend.default_rng(*keys)))
        distance, floor = metrics.distance_to_data(generated * saved["std"] + saved["mean"], args.data)
        scores.append(distance / floor)
    return scores


def verdict(lecture, fast):
    """'fast better', 'fast worse' (the means differ by more than 2 standard errors) or 'same',
    from the mean scores of each configuration's models (one per seed)."""
    difference = statistics.mean(fast) - statistics.mean(lecture)
    error = math.sqrt(statistics.variance(fast) / len(fast) + statistics.variance(lecture) / len(lecture))
    if abs(difference) <= 2 * error:
        return f"same ({difference:+.2f} ± {error:.2f})"
    return f"fast {'better' if difference < 0 else 'worse'} ({difference:+.2f} ± {error:.2f})"


def seed_means(record, name, config):
    """Each seed's model's mean score on set `name`, by seed."""
    runs = sorted((r for r in record["models"] if (r["set"], r["config"]) == (name, config)), key=lambda r: r["seed"])
    return [statistics.mean(r["scores"]) for r in runs]


def markdown(record, sets, configs):
    def models(name, config):
        means = seed_means(record, name, config)
        return (f"{', '.join(f'{m:.2f}' for m in means)} (**{statistics.mean(means):.2f}**)" if means else ""), means

    counts = {config: sorted({len(r["scores"]) for r in record["models"] if r["config"] == config})
              for config in configs}
    draws = ", ".join(f"{config} {'/'.join(map(str, counts[config]))}" for config in configs)
    lines = ["Perfect sampler: fresh draws of the data scored like a model's samples, median and 5-95% of "
             "one draw, and 5-95% of a median of 3. Models: the mean score of each seed's model over its "
             f"draws of {N} points ({draws} draws), their mean in bold; verdict: the difference of the "
             "means, ± one standard error from the seeds' spread.", "",
             "| set | perfect sampler: one draw | median of 3 | "
             + " | ".join(f"{c}: mean per seed" for c in configs) + " | verdict |",
             "| --- | --- | --- | " + "--- | " * len(configs) + "--- |"]
    for name in sets:
        band = record["perfect"].get(name)
        if band is None:
            continue
        one = f"{np.median(band):.2f} ({np.percentile(band, 5):.2f}-{np.percentile(band, 95):.2f})"
        triples = np.median(np.reshape(band[:len(band) // 3 * 3], (-1, 3)), axis=1)
        three = f"{np.percentile(triples, 5):.2f}-{np.percentile(triples, 95):.2f}"
        cells = [models(name, config) for config in configs]
        judged = verdict(cells[0][1], cells[1][1]) if len(configs) == 2 and all(len(c[1]) > 1 for c in cells) else ""
        lines.append(f"| {name} | {one} | {three} | " + " | ".join(c[0] for c in cells) + f" | {judged} |")
    return "\n".join(lines) + "\n"


def plot(record, sets, configs, path):
    """Per set: each configuration's expected score (the mean of its seeds' mean scores) with a
    bar of two standard errors, over the perfect sampler's 5-95% range of one draw and its median."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    sets = [name for name in sets if name in record["perfect"]]
    for i, name in enumerate(sets):
        low, high = np.percentile(record["perfect"][name], [5, 95])
        ax.fill_between([i - 0.4, i + 0.4], low, high, color="0.88", label="perfect sampler, 5-95%" if i == 0 else None)
        ax.hlines(np.median(record["perfect"][name]), i - 0.4, i + 0.4, color="0.6",
                  label="perfect sampler, median" if i == 0 else None)
    for k, (config, marker) in enumerate(zip(configs, "os^")):
        points = []
        for i, name in enumerate(sets):
            means = seed_means(record, name, config)
            if len(means) > 1:
                points.append((i + 0.15 * (2 * k - 1), statistics.mean(means),
                               2 * statistics.stdev(means) / math.sqrt(len(means))))
        if points:
            x, y, error = zip(*points)
            ax.errorbar(x, y, yerr=error, fmt=marker, capsize=3, label=f"{config}: mean score ± 2 s.e.")
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels(sets, rotation=30, ha="right")
    ax.set_ylabel("distance / floor, 5000 points")
    ax.axhline(1, color="grey", linewidth=0.5)
    ax.legend(fontsize=8)
    ax.set_title("expected score of each configuration's models, against a perfect sampler's spread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = selection_parser(__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4, help="draws of 5000 points per trained model")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "recipes"), help="recipes.py's --out")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "recipe_noise.json"))
    parser.add_argument("--scores", default=os.path.join(ROOT, "benchmarks", "recipes.json"),
                        help="recipes.py's record: each model's first draw must reproduce its score")
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument("--plot", help="write the expected scores against the perfect sampler's to this PNG")
    parser.add_argument("--report", action="store_true", help="run nothing: tabulate the JSON")
    args = parser.parse_args()
    sets, seeds, configs = args.sets.split(","), [int(s) for s in args.seeds.split(",")], args.configs.split(",")
    record = {"perfect": {}, "models": []}
    if os.path.exists(args.json):
        with open(args.json) as file:
            record = json.load(file)
    known = {}
    if os.path.exists(args.scores):
        with open(args.scores) as file:
            known = {(r["set"], r["seed"], r["config"]): r["ratio"] for r in json.load(file)["runs"]}

    def save():
        with open(args.json, "w") as file:
            json.dump(record, file, indent=1)

    demo = toy2d_demo()
    for name in [] if args.report else sets:
        if name not in record["perfect"]:
            record["perfect"][name] = perfect_sampler(name)
            save()
        for seed in seeds:
            for config in configs:
                done = [r for r in record["models"] if (r["set"], r["seed"], r["config"]) == (name, seed, config)]
                if done and len(done[0]["scores"]) >= args.draws:
                    continue
                run_args = cli.parse(demo.parser(), ["--data", name, "--seed", str(seed)] + CONFIGS[config])
                scores = model_scores(os.path.join(args.runs, config, f"{name}-{seed}"), run_args, args.draws)
                if (name, seed, config) in known and abs(known[name, seed, config] - scores[0]) > 0.006:
                    print(f"warning: {name} seed {seed} {config}: the demo's draw scores {scores[0]:.3f} here, "
                          f"{known[name, seed, config]:.2f} in {args.scores}", file=sys.stderr)
                record["models"] = [r for r in record["models"] if r not in done]
                record["models"].append({"set": name, "seed": seed, "config": config, "scores": scores})
                print(f"{name:16s} seed {seed} {config:8s} " + " ".join(f"{s:.2f}" for s in scores), flush=True)
                save()
    text = markdown(record, sets, configs)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(text)
    if args.plot:
        plot(record, sets, configs, args.plot)


if __name__ == "__main__":
    main()
