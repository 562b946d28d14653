"""Classifier-free guidance (Ho & Salimans 2022): the label layer, the conditional models, the
guided eps from one doubled batch, an exact conditional oracle (each class a Gaussian), a
conditional MLP trained on two_discs, the labels of the data sets, and the demos' errors."""

import math
import os
import sys

import numpy as np
import pytest
from test_diffusion import OptimalDenoiser

from numpy_ddpm import backend, data, gradcheck
from numpy_ddpm.app.train import TrainConfig, Trainer
from numpy_ddpm.diffusion import ddim_generate, generate, guided_eps
from numpy_ddpm.layers import LabelAppender
from numpy_ddpm.models import convnet, mlp
from numpy_ddpm.nn import checkpoint
from numpy_ddpm.schedule import Schedule

from conftest import to_np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The label layer and the conditional models ------------------------------------------------

def test_label_appender():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    y = LabelAppender(2).forward(x, np.array([0, 2, 1]))
    np.testing.assert_array_equal(y, [[0, 1, 1, 0, 0], [2, 3, 0, 0, 1], [4, 5, 0, 1, 0]])
    images = np.zeros((2, 1, 3, 3), np.float32)
    y = LabelAppender(3).forward(images, np.array([3, 1]))
    assert y.shape == (2, 5, 3, 3)
    np.testing.assert_array_equal(y[:, 1:, 0, 0], [[0, 0, 0, 1], [0, 1, 0, 0]])
    assert np.all(y[:, 1:] == y[:, 1:, :1, :1])                 # constant channels
    dy = np.random.default_rng(0).standard_normal(y.shape)
    np.testing.assert_array_equal(LabelAppender(3).backward(dy), dy[:, :1])


def test_unconditional_models_are_unchanged():
    """nb_classes=None: the same layers and parameters as before guidance existed."""
    assert mlp(2).flat_params.size == 3 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 2 + 2
    assert [type(layer).__name__ for layer in mlp(2).layers][:2] == ["TimeAppender", "Linear"]
    conditional = mlp(2, nb_classes=3)
    assert conditional.nb_classes == 3 and mlp(2).nb_classes is None
    assert conditional.flat_params.size - mlp(2).flat_params.size == 4 * 256     # K + 1 more inputs
    assert convnet(1, width=8, nb_classes=10).flat_params.size - convnet(1, width=8).flat_params.size == 11 * 8 * 25


def test_the_label_changes_eps_and_gets_no_gradient():
    model = mlp(2, hidden=16, seed=1, nb_classes=3)
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    a = model.forward(x, 0.1, np.array([0, 0, 0, 0]))
    b = model.forward(x, 0.1, np.array([1, 2, 3, 0]))
    assert np.all(np.abs(a - b)[:3] > 0) and np.array_equal(a[3], b[3])
    assert model.backward(np.ones_like(b)).shape == x.shape           # the gradient is x's alone


@pytest.mark.parametrize("make,shape,t", [
    (lambda: LabelAppender(3), (6, 2), None),
    (lambda: LabelAppender(3), (6, 2, 3, 3), None),
    (lambda: mlp(2, hidden=32, seed=1, nb_classes=3), (6, 2), "array"),
    (lambda: convnet(1, width=4, kernel_size=3, seed=1, nb_classes=3), (2, 1, 5, 5), 0.2),
])
def test_conditional_gradients(float64, make, shape, t):
    """As `python -m numpy_ddpm.gradcheck` does for its conditional cases: the input and every
    parameter, a random upstream gradient; the label columns reach the first layer's weights
    (checked) and return nothing to x (x's gradient is checked entry by entry)."""
    rng = np.random.default_rng(3)
    layer = make()
    labels = backend.asarray(rng.integers(0, 4, shape[0]))               # 0..K, K = 3 "no label"
    args = (labels,) if t is None else (rng.standard_normal(shape[0]) if t == "array" else t, labels)
    x = gradcheck.away_from_kinks(layer, shape, *args, rng=rng)
    errors = gradcheck.check(layer, x, *args, rng=rng, h=1e-5)
    assert set(errors) == {"x"} | {name for name, _, _ in layer.parameters()}
    assert max(errors.values()) < 1e-6, errors


# The guided eps ----------------------------------------------------------------------------

class Recorder:
    """eps_theta(x, t, y) = x + 10 y: records each forward call's batch size."""

    nb_classes = 4

    def __init__(self):
        self.batches = []

    def forward(self, x, t, labels=None):
        self.batches.append(x.shape[0])
        return x + 10 * labels.reshape(-1, 1).astype(x.dtype)


@pytest.mark.parametrize("s", [0.0, 1.0, 2.5, 7.0])
def test_guided_eps_is_one_forward_pass(s):
    x = np.random.default_rng(0).standard_normal((5, 2))
    labels = np.array([0, 1, 2, 3, 1])
    model = Recorder()
    eps = guided_eps(model, x, 0.0, labels, s)
    null, conditional = x + 10 * 4, x + 10 * labels[:, None]
    np.testing.assert_allclose(eps, null + s * (conditional - null))
    assert model.batches == ([5] if s in (0, 1) else [10])          # s = 0, 1: one half is enough


def test_guided_eps_in_chunks_is_the_same_eps_in_smaller_forward_passes():
    """chunk: the model sees at most that many rows (doubled under guidance); the eps is unchanged."""
    x = np.random.default_rng(0).standard_normal((7, 2))
    labels = np.array([0, 1, 2, 3, 1, 0, 2])
    model = Recorder()
    whole = guided_eps(model, x, 0.0, labels, 2.5)
    model.batches = []
    np.testing.assert_array_equal(guided_eps(model, x, 0.0, labels, 2.5, chunk=3), whole)
    assert model.batches == [6, 6, 2]


def test_sampling_chunks_images_not_points():
    from numpy_ddpm.diffusion.sampling import CHUNK_ENTRIES, chunk_rows
    assert chunk_rows((5000, 2)) == CHUNK_ENTRIES // 2 > 5000        # the toy demos' points: one pass
    assert chunk_rows((1000, 1, 28, 28)) == CHUNK_ENTRIES // 784 < 1000


class ConditionalOracle:
    """The exact eps of each class (class k: a 1-D Gaussian N(means[k], stds[k]^2)), and of the
    mixture of the classes (weights) for the "no label" class K."""

    def __init__(self, schedule, weights, means, stds):
        self.nb_classes = len(weights)
        self.classes = [OptimalDenoiser(schedule, [1.0], [m], [s]) for m, s in zip(means, stds)]
        self.mixture = OptimalDenoiser(schedule, weights, means, stds)

    def forward(self, x, t, labels):
        labels = to_np(labels)
        eps = to_np(self.mixture.forward(x, t))
        for k, oracle in enumerate(self.classes):
            rows = labels == k
            if rows.any():
                eps[rows] = to_np(oracle.forward(x[rows], t))
        return backend.asarray(eps)


MEANS, STDS = [-1.0, 1.0], [0.4, 0.4]


def guided_samples(s, sampler, n=2000):
    schedule = Schedule()
    oracle = ConditionalOracle(schedule, [0.5, 0.5], MEANS, STDS)
    labels = np.arange(n) % 2
    if sampler == "ddpm":
        x = generate(oracle, (n, 1), schedule, backend.default_rng(1), labels=labels, guidance=s)
    else:
        x = ddim_generate(oracle, (n, 1), schedule, backend.default_rng(1), nb_steps=50, labels=labels, guidance=s)
    x = to_np(x)[:, 0]
    return x[labels == 0], x[labels == 1]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guidance_one_samples_each_class(sampler):
    """s = 1: the conditional eps alone, so each label's samples follow its class's Gaussian
    (6 standard errors, plus 2% for the samplers' discretisation)."""
    n = 1000
    for x, mean, std in zip(guided_samples(1.0, sampler), MEANS, STDS):
        assert abs(x.mean() - mean) < 6 * std / math.sqrt(n) + 0.02
        assert abs(x.std() / std - 1) < 6 / math.sqrt(2 * n) + 0.02


def test_larger_guidance_moves_away_from_the_other_class():
    """s = 3: each class's samples move away from the other class (whose mean is on the other
    side of 0) and fewer of them lie on the other class's side."""
    plain, guided = guided_samples(1.0, "ddim"), guided_samples(3.0, "ddim")
    assert guided[0].mean() < plain[0].mean() - 0.1 and guided[1].mean() > plain[1].mean() + 0.1
    assert (guided[0] > 0).mean() < 0.5 * (plain[0] > 0).mean()
    assert (guided[1] < 0).mean() < 0.5 * (plain[1] < 0).mean()
    unconditional = guided_samples(0.0, "ddim")              # s = 0: both labels draw the mixture
    for x in unconditional:
        assert abs((x < 0).mean() - 0.5) < 0.06


# A trained conditional model ----------------------------------------------------------------

def test_conditional_mlp_on_two_discs_puts_each_label_in_its_disc():
    """4096 points, batch 256, 1600 steps (a few seconds), then 1000 samples of each label with
    DDIM (50 steps, s = 1). A model trained this briefly blurs the discs' edges: strictly inside
    its disc are about 92% (small disc) and 95% (large) of each label's samples, and the
    lecture's unconditional model after 100,000 steps has 95% too; within 0.05 of the edge
    are 96 to 97%. So: at least 95% within the disc's radius + 0.05, and at least 99% nearer
    their own disc than the other."""
    x, y = data.toy_labelled("two_discs", 4096, seed=1)
    x_standardised, mean, std = data.standardise(x)
    config = TrainConfig(nb_epochs=100, batch_size=256, learning_rate=3e-3, lr_schedule="cosine",
                         ema_decay=0.9, seed=1, blas_threads=1)
    trainer = Trainer(mlp(2, hidden=64, seed=1, nb_classes=2), Schedule(), config)
    trainer.fit(backend.asarray(x_standardised), progress=False, labels=backend.asarray(y))
    trainer.finish()
    labels = np.arange(2000) % 2
    with backend.blas_threads(1):
        out = to_np(ddim_generate(trainer.model, (2000, 2), trainer.schedule, backend.default_rng(2),
                                  nb_steps=50, labels=labels)) * std + mean
    centres, radii = np.array([[-0.5, -0.5], [0.5, 0.5]]), np.array([0.3, 0.5])
    for k in (0, 1):
        points = out[labels == k]
        own = np.linalg.norm(points - centres[k], axis=1)
        other = np.linalg.norm(points - centres[1 - k], axis=1) - radii[1 - k]
        assert (own < radii[k] + 0.05).mean() >= 0.95, (k, (own < radii[k]).mean(), (own < radii[k] + 0.05).mean())
        assert (own - radii[k] < other).mean() >= 0.99


def test_conditional_training_draws_and_resume(tmp_path):
    """The label drops come from the step's own generator (seeded by (seed, step)), so a resumed
    conditional run ends where an uninterrupted one does, with no replay; cond_drop = 1 trains
    only the "no label" class."""
    x, y = data.toy_labelled("moons", 95, seed=3)
    x, y = backend.asarray(data.standardise(x)[0]), backend.asarray(y)

    def trainer():
        config = TrainConfig(nb_epochs=3, batch_size=10, seed=2, log_every=7)
        return Trainer(mlp(2, hidden=16, seed=2, nb_classes=2), Schedule(), config, meta={"model": "m"})
    full = trainer()
    full.fit(x, progress=False, labels=y)
    first = trainer()
    first.fit(x, checkpoint_path=str(tmp_path / "c.npz"), progress=False, max_steps=13, labels=y)
    resumed = trainer()
    resumed.load(str(tmp_path / "c.npz"))
    resumed.fit(x, progress=False, labels=y)
    np.testing.assert_array_equal(to_np(resumed.model.flat_params), to_np(full.model.flat_params))


def test_cond_drop_replaces_labels_by_the_null_class(monkeypatch):
    from numpy_ddpm import diffusion
    from numpy_ddpm.diffusion import training
    seen = []
    monkeypatch.setattr(training, "loss_and_backward",
                        lambda model, x0, t, eps, schedule, labels=None, rng=None: seen.append(to_np(labels)) or 0.0)

    class Step:
        def step(self):
            pass
    model = mlp(2, hidden=4, nb_classes=5)
    x0, labels = np.zeros((4000, 2), np.float32), np.arange(4000) % 5
    for p in (0.0, 0.1, 1.0):
        diffusion.train_step(model, Step(), x0, Schedule(), backend.default_rng(0), labels=labels, cond_drop=p)
        dropped = seen[-1] == 5
        assert abs(dropped.mean() - p) < 0.03
        np.testing.assert_array_equal(seen[-1][~dropped], labels[~dropped])


# Labels of the data sets ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(data.TOY))
def test_toy_labels(name):
    x, labels = data.toy_labelled(name, 2000, seed=0)
    np.testing.assert_array_equal(x, data.toy(name, 2000, seed=0))
    if name not in data.NB_CLASSES:
        assert labels is None
        with pytest.raises(data.DataError, match="no classes"):
            data.require_classes(name)
        return
    K = data.NB_CLASSES[name]
    assert labels.shape == (2000,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(K))
    # each class is its own part of the set: its points' mean is far from the other classes'
    centres = np.array([x[labels == k].mean(axis=0) for k in range(K)])
    spread = max(x[labels == k].std(axis=0).max() for k in range(K))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(K) * 1e9
    assert gaps.min() > 0.5 * spread or name == "circles"         # circles: concentric, same centre
    if name == "circles":
        radii = [np.linalg.norm(x[labels == k], axis=1).mean() for k in range(K)]
        assert abs(radii[0] - 1) < 0.05 and abs(radii[1] - 0.5) < 0.05


def test_image_labels(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    images, labels = data.images("digits", 30, labels=True)
    assert images.shape == (30, 1, 8, 8) and labels.shape == (30,) and labels.max() <= 9
    np.testing.assert_array_equal(labels[:10], np.arange(10))


def idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_labels(tmp_path):
    images = np.zeros((5, 28, 28), np.uint8)
    for name in data.MNIST_FILES:
        (tmp_path / name[:-3]).write_bytes(idx_bytes(images if "images" in name else np.arange(5) + 3))
    x, y = data.idx_images("mnist", n=4, data_dir=str(tmp_path), labels=True)
    assert x.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(y, [3, 4, 5, 6])
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(3)))
    with pytest.raises(data.DataError, match="not one for each"):
        data.idx_images("mnist", data_dir=str(tmp_path), labels=True)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(5) + 20))
    with pytest.raises(data.DataError, match="outside 0..9"):
        data.idx_images("mnist", data_dir=str(tmp_path), labels=True)


# The demos ------------------------------------------------------------------------------------

class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_demo(script, *args):
    """Run a demo in this process (no interpreter start-up per run): its exit code and output."""
    import contextlib
    import io
    import runpy

    import matplotlib.pyplot as plt
    argv, stdout, stderr = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = [script, *args, "--no-window", "--no-progress"]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(os.path.join(ROOT, "demos", script), run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    finally:
        sys.argv = argv
        plt.close("all")
        backend.use("numpy")
    return Result(code, stdout.getvalue(), stderr.getvalue())


TINY = ["--nb-samples", "300", "--nb-epochs", "1", "--nb-generated", "40", "--hidden", "16", "--ema-decay", "0.5"]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A finished unconditional run (gaussian_mixture) and a finished conditional one (two_discs)."""
    root = tmp_path_factory.mktemp("runs")
    plain, conditional = str(root / "plain"), str(root / "conditional")
    result = run_demo("toy2d.py", "--data", "gaussian_mixture", *TINY, "--out", plain)
    assert result.returncode == 0, result.stderr
    result = run_demo("toy2d.py", "--data", "two_discs", "--conditional", *TINY, "--out", conditional,
                      "--sampler", "ddim", "--sampling-steps", "10", "--guidance", "2")
    assert result.returncode == 0, result.stderr
    labels = np.load(os.path.join(conditional, "labels.npy"))
    np.testing.assert_array_equal(labels, np.arange(40) % 2)
    assert np.load(os.path.join(conditional, "samples.npy")).shape == (40, 2)
    return plain, conditional


def test_resuming_a_finished_run_only_samples(trained_runs):
    plain, conditional = trained_runs
    checkpoint_path = os.path.join(plain, "checkpoint.npz")
    before = open(checkpoint_path, "rb").read()
    samples = {}
    for sampler in (["--sampler", "ddpm"], ["--sampler", "ddim", "--sampling-steps", "20", "--eta", "1"]):
        result = run_demo("toy2d.py", "--data", "gaussian_mixture", *TINY, "--out", plain, *sampler,
                          "--resume", checkpoint_path)
        assert result.returncode == 0, result.stderr
        samples[sampler[1]] = np.load(os.path.join(plain, "samples.npy"))
    assert open(checkpoint_path, "rb").read() == before                   # no training step was taken
    assert not np.array_equal(samples["ddpm"], samples["ddim"])
    _, meta = checkpoint.load(os.path.join(conditional, "checkpoint.npz"))
    assert meta["model"] == {"name": "mlp", "kwargs": {"dim": 2, "hidden": 16, "nb_classes": 2}}
    result = run_demo("toy2d.py", "--data", "two_discs", "--conditional", "--label", "1", *TINY, "--out",
                      conditional, "--resume", os.path.join(conditional, "checkpoint.npz"),
                      "--sampler", "ddim", "--sampling-steps", "5")
    assert result.returncode == 0, result.stderr
    assert np.all(np.load(os.path.join(conditional, "labels.npy")) == 1)


@pytest.mark.parametrize("args,expected", [
    (["--conditional", "--guidance", "-1"], "--guidance must be 0 or more"),
    (["--sampler", "ddim", "--sampling-steps", "0"], "--sampling-steps must be between 1 and 1000"),
    (["--sampler", "ddim", "--sampling-steps", "1001"], "--sampling-steps must be between 1 and 1000"),
    (["--sampler", "ddim", "--eta", "1.5"], "--eta must be in [0, 1]"),
    (["--sampler", "ddim", "--eta", "-0.1"], "--eta must be in [0, 1]"),
    (["--conditional", "--label", "2"], "--label must be a class of two_discs, 0 to 1"),
    (["--conditional", "--cond-drop", "1.5"], "--cond-drop must be in [0, 1]"),
    (["--guidance", "3"], "need --conditional"),
    (["--conditional", "--data", "spiral"], "spiral has no classes"),
    (["--conditional", "resume-plain"], "different model"),
    (["resume-conditional"], "different model"),
])
def test_demo_user_errors(trained_runs, args, expected):
    """One line, a non-zero exit, and nothing in --out written over."""
    plain, conditional = trained_runs
    if args[-1].startswith("resume-"):
        out = plain if args[-1] == "resume-plain" else conditional
        data_set = "gaussian_mixture" if out == plain else "two_discs"
        args = args[:-1] + ["--data", data_set, "--resume", os.path.join(out, "checkpoint.npz")]
    else:
        out = conditional
        args = (["--data", "two_discs"] if "--data" not in args else []) + args
    before = {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}
    result = run_demo("toy2d.py", *TINY, *args, "--out", out)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and expected in lines[0], result.stderr
    assert {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))} == before


def test_mnist_demo_conditional_with_a_guidance_sweep(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    out = str(tmp_path / "run")
    result = run_demo("mnist.py", "--conditional", "--guidance-sweep", "0,1,3", "--nb-samples", "60",
                      "--nb-epochs", "1", "--nb-generated", "10", "--width", "4", "--kernel-size", "3",
                      "--sampler", "ddim", "--sampling-steps", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    assert np.load(os.path.join(out, "samples.npy")).shape == (10, 1, 8, 8)
    np.testing.assert_array_equal(np.load(os.path.join(out, "labels.npy")), np.arange(10))
    assert os.path.getsize(os.path.join(out, "guidance.png")) > 0
    sweep = {s: np.load(os.path.join(out, f"samples_guidance_{s}.npy")) for s in ("0", "1", "3")}
    np.testing.assert_array_equal(sweep["1"], np.load(os.path.join(out, "samples.npy")))   # s = 1 is the main draw
    assert sweep["3"].shape == (10, 1, 8, 8) and not np.array_equal(sweep["3"], sweep["1"])
    result = run_demo("mnist.py", "--guidance-sweep", "0,1", "--out", out)
    assert result.returncode == 2 and "needs --conditional" in result.stderr
