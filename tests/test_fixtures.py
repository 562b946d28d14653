"""Arrays and checkpoints written by the main of before the package was grouped into layers
(tests/fixtures/README.md): the lecture's nets compute the same passes, and old checkpoints
still load and sample."""

import os
import subprocess
import sys

import numpy as np
import pytest

from numpy_ddpm import models
from numpy_ddpm.nn import checkpoint

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, FIXTURES)

from passes import blas_kernel, passes  # noqa: E402


def test_the_lecture_nets_compute_what_they_did_before_the_move():
    """Outputs, input gradients and every parameter gradient of small versions of the lecture's
    MLP and conv net (each also conditional): bitwise under the BLAS kernel that wrote the
    fixture, to float32 round-off under another."""
    saved = np.load(os.path.join(FIXTURES, "passes_v1.npz"))
    now = passes("small")
    same_kernel = str(saved["__kernel__"]) == blas_kernel()
    assert set(now) == set(saved.files) - {"__kernel__"}
    for name, array in now.items():
        if same_kernel:
            np.testing.assert_array_equal(array, saved[name], err_msg=name)
        else:
            scale = np.abs(saved[name]).max()
            np.testing.assert_allclose(array, saved[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("name", ["toy_mlp_v1", "digits_convnet_cond_v1"])
def test_old_checkpoints_load_with_their_model(name):
    model, meta = models.load(os.path.join(FIXTURES, f"{name}.npz"))
    assert meta["format"] == "numpy-ddpm checkpoint 1"
    assert model.description == models.parse_description(meta["model"])
    arrays, _ = checkpoint.load(os.path.join(FIXTURES, f"{name}.npz"))
    np.testing.assert_array_equal(np.asarray(model.flat_params), arrays["ema"])


def run_demo(script, *flags):
    return subprocess.run([sys.executable, os.path.join(ROOT, "demos", script), *flags, "--no-window",
                           "--no-progress"], capture_output=True, text=True, timeout=300)


DEMOS = {
    "toy_mlp_v1": ("toy2d.py", ["--nb-epochs", "1", "--nb-samples", "200", "--batch-size", "50", "--hidden", "16",
                                "--nb-generated", "10", "--no-bound", "--ema-warmup"]),
    "digits_convnet_cond_v1": ("mnist.py", ["--nb-epochs", "1", "--nb-samples", "50", "--width", "4",
                                            "--kernel-size", "3", "--conditional", "--nb-generated", "10",
                                            "--no-bound", "--ema-warmup"]),
}


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_old_checkpoints_sample_again_as_they_did(name, tmp_path):
    """The demo resumed from an old finished checkpoint only samples, and draws what the old
    code drew from it (bitwise under the kernel that wrote it: the same noise, the same net)."""
    pytest.importorskip("sklearn") if name.startswith("digits") else None
    script, flags = DEMOS[name]
    out = str(tmp_path / "run")
    result = run_demo(script, *flags, "--out", out, "--resume", os.path.join(FIXTURES, f"{name}.npz"))
    assert result.returncode == 0, result.stderr
    samples = np.load(os.path.join(out, "samples.npy"))
    before = np.load(os.path.join(FIXTURES, f"{name}_samples.npy"))
    if blas_kernel() == str(np.load(os.path.join(FIXTURES, "passes_v1.npz"))["__kernel__"]):
        np.testing.assert_array_equal(samples, before)
    else:
        np.testing.assert_allclose(samples, before, rtol=1e-3, atol=1e-3 * np.abs(before).max())


def test_an_old_checkpoint_refuses_to_train_further_in_one_line(tmp_path):
    script, flags = DEMOS["toy_mlp_v1"]
    flags = [f if f != "1" else "2" for f in flags]         # --nb-epochs 2: more steps than it has
    result = run_demo(script, *flags, "--out", str(tmp_path / "run"), "--resume",
                      os.path.join(FIXTURES, "toy_mlp_v1.npz"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot train further" in lines[0], result.stderr
