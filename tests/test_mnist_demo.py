"""demos/mnist.py with the U-Net (--model unet), real MNIST from a folder with only its test
split (../shared/data/mnist: skipped where absent, as on a user's clone), and the recipes per
data set and model."""

import os
import subprocess
import sys

import numpy as np
import pytest

from numpy_ddpm.nn import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")
TINY_UNET = ["--model", "unet", "--base", "8", "--groups", "2", "--nb-epochs", "1", "--no-bound",
             "--sampler", "ddim", "--sampling-steps", "3", "--no-window", "--no-progress"]


def run(*flags):
    return subprocess.run([sys.executable, os.path.join(ROOT, "demos", "mnist.py"), *flags],
                          capture_output=True, text=True, timeout=600)


def test_the_unet_trains_samples_and_resumes_on_digits(tmp_path):
    pytest.importorskip("sklearn")
    out = str(tmp_path / "run")
    result = run(*TINY_UNET, "--nb-samples", "50", "--nb-generated", "4", "--conditional", "--out", out)
    assert result.returncode == 0, result.stderr
    assert np.load(os.path.join(out, "samples.npy")).shape == (10, 1, 8, 8)         # one per class
    _, meta = checkpoint.load(os.path.join(out, "checkpoint.npz"))
    assert meta["model"]["name"] == "unet" and meta["model"]["kwargs"]["attention"] == [2]
    again = run(*TINY_UNET, "--nb-samples", "50", "--nb-generated", "4", "--conditional", "--out", out,
                "--resume", os.path.join(out, "checkpoint.npz"))
    assert again.returncode == 0, again.stderr
    other = run("--model", "lecture", "--nb-samples", "50", "--nb-epochs", "1", "--conditional", "--no-window",
                "--out", out, "--resume", os.path.join(out, "checkpoint.npz"))
    assert other.returncode == 2 and "holds a different model" in other.stderr
    assert len(other.stderr.strip().splitlines()) <= 2                           # (an EMA warning, the error)


@pytest.mark.parametrize("flags, message", [
    (["--attention", "5"], "attention at resolution 5"),
    (["--multipliers", "1,2,2,2,2"], "cannot halve an image of size 8"),
    (["--groups", "3"], "groups do not divide"),
    (["--multipliers", "1,x"], "take integers"),
])
def test_bad_unet_settings_are_one_line_and_write_nothing(tmp_path, flags, message):
    out = tmp_path / "never"
    result = run("--model", "unet", *flags, "--out", str(out), "--no-window")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert not out.exists()


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="no ../shared/data/mnist (a user's clone has none)")
def test_mnist_from_its_test_split_alone(tmp_path):
    from numpy_ddpm import data
    assert data.test_split_only("mnist", MNIST_DIR)
    images, labels = data.images("mnist", None, MNIST_DIR, labels=True)
    held_out = data.held_out("mnist", MNIST_DIR)
    assert images.shape == (9000, 1, 28, 28) and labels.shape == (9000,) and held_out.shape == (1000, 1, 28, 28)
    assert 0 <= images.min() and images.max() == 1
    out = str(tmp_path / "run")
    result = run(*TINY_UNET, "--data", "mnist", "--data-dir", MNIST_DIR, "--nb-samples", "32", "--nb-generated", "1",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert "holds only the test split of mnist: training on its first 32 images, holding out its last 1,000" \
        in result.stdout
    assert np.load(os.path.join(out, "samples.npy")).shape == (1, 1, 28, 28)


def load_demo():
    import importlib.util
    spec = importlib.util.spec_from_file_location("mnist_demo", os.path.join(ROOT, "demos", "mnist.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_the_fast_recipe_is_per_data_set_and_model():
    demo = load_demo()

    class Args:
        def __init__(self, data, model):
            self.data, self.model, self.given = data, model, ()
    assert demo.fast(Args("digits", "lecture"))["learning_rate"] == 3e-3             # today's recipe
    assert demo.fast(Args("mnist", "lecture"))["learning_rate"] == 5e-4     # 3e-3 collapses it, 1e-3 diverged
    assert demo.fast(Args("mnist", "unet")) is demo.FAST_UNET


def test_the_unet_recipe_is_guided_unless_told_otherwise():
    from numpy_ddpm.app import cli
    demo = load_demo()

    def parse(*flags):
        return cli.parse(demo.build_parser(), ["--model", "unet", "--recipe", "fast", *flags])
    args = parse()
    assert args.conditional and args.guidance == 1.5 and args.nb_epochs == 5
    args = parse("--guidance", "2")                                     # an explicit flag wins
    assert args.conditional and args.guidance == 2
    args = parse("--no-conditional")                                    # unconditional: no guidance either
    assert not args.conditional and args.guidance == 1 and args.nb_epochs == 5
    cli.check_sampling(args, 1000)                                      # a consistent set of flags
    lecture = cli.parse(demo.build_parser(), ["--model", "lecture", "--recipe", "fast"])
    assert not lecture.conditional and lecture.guidance == 1
