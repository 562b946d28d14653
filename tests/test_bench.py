"""The benchmark scripts: bench.py --quick runs and prints its table (a smoke test: no timing is
asserted); recipes.py and recipe_noise.py tabulate, redraw and judge what they should;
toy_process.py finds the demo's phases; ddim_steps.py scores image checkpoints."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_runs(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench.py"), "--quick", "--no-torch",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "MLP train step, batch 25" in result.stdout and "matmul peak" in result.stdout
    rows = json.loads(out.read_text())["results"]
    assert {r["impl"] for r in rows} >= {"numpy"}
    assert all(r["per_second"] > 0 and r["gflops"] > 0 for r in rows)


def test_recipes_table_imports_untimed_runs_and_checks_them(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import recipes
    finally:
        sys.path.pop(0)
    log = tmp_path / "lecture.txt"
    log.write_text("spiral 0 distance / floor = 1.74 wall 919.6\nspiral 1 distance / floor = 1.44 wall 108.2\n"
                   "moons 0 distance / floor = 0.80 wall 371.2\n")
    timed = [{"set": "spiral", "seed": 0, "config": "lecture", "ratio": 1.70, "wall": 101.0, "train": 87.0,
              "sample": 14.0},
             {"set": "spiral", "seed": 0, "config": "fast", "ratio": 1.50, "wall": 12.0, "train": 8.0, "sample": 2.0},
             {"set": "spiral", "seed": 1, "config": "fast", "ratio": 1.60, "wall": 12.0, "train": 9.0, "sample": 1.0},
             {"set": "moons", "seed": 0, "config": "fast", "ratio": 0.90, "wall": 12.0, "train": 9.0, "sample": 1.0}]
    imported = recipes.import_log(str(log), timed)
    assert [(r["set"], r["seed"], r["train"]) for r in imported] == [("spiral", 1, None), ("moons", 0, None)]
    assert "1.70 measured, 1.74 in" in capsys.readouterr().err          # the timed run disagrees with the log
    runs = timed + imported
    text = recipes.markdown(runs, recipes.summary(runs), ["spiral", "moons"], [0, 1])
    assert "| spiral | 1.70, 1.44 (**1.57**) | 1.50, 1.60 (**1.55**) | yes | 101.0 | 10.0 |" in text
    assert "| moons | 0.80 (**0.80**) | 0.90 (**0.90**) | no |  | 10.0 |" in text
    assert "lecture 101.0 s (1 runs), fast 10.0 s (3 runs): **10.1x**" in text


def noise_module():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import recipe_noise
    finally:
        sys.path.pop(0)
    return recipe_noise


def test_recipe_noise_redraws_a_runs_samples(tmp_path):
    """The fast recipe's flags reach the checkpoint, and recipe_noise's first draw from it
    reproduces the demo's own score; its other draws use other noise."""
    from numpy_ddpm.app import cli
    from numpy_ddpm.nn import checkpoint
    noise = noise_module()
    flags = ["--data", "moons", "--seed", "1", "--recipe", "fast", "--nb-samples", "600", "--nb-epochs", "2"]
    out = str(tmp_path / "run")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "demos", "toy2d.py"), *flags, "--nb-generated",
                             str(noise.N), "--no-bound", "--no-window", "--no-progress", "--out", out],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    config = checkpoint.load(os.path.join(out, "checkpoint.npz"))[1]["config"]
    fast = noise.toy2d_demo().FAST
    assert config["nb_epochs"] == 2 and config["t_power"] == fast["t_power"] == 2.0
    assert config["batch_size"] == fast["batch_size"] and config["lr_schedule"] == fast["lr_schedule"]
    printed = float(result.stdout.split("distance / floor = ")[1].split()[0])
    scores = noise.model_scores(out, cli.parse(noise.toy2d_demo().parser(), flags), 2)
    assert round(scores[0], 2) == printed and scores[1] != scores[0]


def test_recipe_noise_verdict_and_perfect_sampler():
    noise = noise_module()
    low, high = [1.0, 1.1, 0.9, 1.0], [2.0, 2.1, 1.9, 2.0]
    assert noise.verdict(low, high).startswith("fast worse (+1.00")
    assert noise.verdict(high, low).startswith("fast better (-1.00")
    assert noise.verdict(low, [0.8, 1.3, 1.0, 1.1]).startswith("same")
    scores = noise.perfect_sampler("moons", nb_draws=5)
    assert len(set(scores)) == 5 and 0.3 < sorted(scores)[2] < 3          # fresh data scores near its floor


def test_toy_process_times_the_demos_phases(tmp_path, monkeypatch):
    """toy_process.py's wrapped run finds every phase of the demo (the bound where it runs, none
    where it is skipped), and the phases add up to the run's total."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import argparse

    import toy_process
    tiny = ["--data", "gaussian_mixture", "--nb-samples", "200", "--nb-epochs", "1", "--nb-generated", "50",
            "--hidden", "16"]
    monkeypatch.setattr(toy_process, "CONFIGS", {"with bound": tiny, "without": tiny + ["--no-bound"]})
    args = argparse.Namespace(data="spiral", out=str(tmp_path))
    with_bound, without = toy_process.phases("with bound", args), toy_process.phases("without", args)
    expected = {"imports", "training", "sampling", "figures", "metric", "total"}
    assert set(with_bound) == expected | {"bound (with bound.png)"} and set(without) == expected
    for parts in (with_bound, without):
        assert all(seconds > 0 for seconds in parts.values())
        assert sum(s for name, s in parts.items() if name != "total") <= parts["total"]
    assert (tmp_path / "with bound" / "bound.png").exists() and not (tmp_path / "without" / "bound.png").exists()
    assert toy_process.machine()["blas"], "threadpoolctl names no BLAS"


def test_ddim_steps_scores_an_image_checkpoint_by_fd_over_floor(tmp_path, monkeypatch):
    """An image checkpoint (digits) is sampled at the digits' shape and scored by
    quality.report's FD over floor; every sampler gives a row."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import ddim_steps

    from numpy_ddpm.models import convnet
    from numpy_ddpm.nn import checkpoint
    model = convnet(1, width=4, kernel_size=3, seed=0)
    params = model.flat_params.copy()
    path = str(tmp_path / "checkpoint.npz")
    checkpoint.save(path, {"params": params, "ema": params},
                    {"model": model.description, "data": "digits", "mean": 0.3, "std": 0.4})
    scored = []

    def report(samples, name):
        scored.append((samples.shape, name))
        return {"fd": 3.0, "floor": 1.5}
    monkeypatch.setattr(ddim_steps.quality, "report", report)
    rows = ddim_steps.measure(path, 6, [2], [0.0], [0], dpm_steps=[3], dpm_orders=[2])
    assert [(r["sampler"], r["steps"]) for r in rows] == [("DDPM", 1000), ("DDIM eta=0", 2), ("DPM-Solver++ 2M", 3)]
    assert all(r["ratio"] == 2.0 and r["data"] == "digits" for r in rows)
    assert scored == [((6, 1, 8, 8), "digits")] * 3
