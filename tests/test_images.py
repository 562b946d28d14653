"""Image data: the IDX parser, the download path (against a local server), digits, the conv net."""

import gzip
import hashlib
import http.server
import os
import runpy
import subprocess
import sys
import threading

import numpy as np
import pytest

from numpy_ddpm import backend, data
from numpy_ddpm.diffusion import generate, train_step
from numpy_ddpm.models import convnet
from numpy_ddpm.nn import checkpoint
from numpy_ddpm.optim import Adam
from numpy_ddpm.schedule import Schedule

from conftest import to_np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def images_u8():
    return np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx(tmp_path, images_u8, gzipped):
    path = tmp_path / ("x.idx.gz" if gzipped else "x.idx")
    blob = idx_bytes(images_u8)
    path.write_bytes(gzip.compress(blob) if gzipped else blob)
    np.testing.assert_array_equal(data.read_idx(str(path)), images_u8)


def test_read_idx_errors(tmp_path, images_u8):
    blob = idx_bytes(images_u8)
    bad_magic = tmp_path / "magic"
    bad_magic.write_bytes(b"\x12\x34" + blob[2:])
    with pytest.raises(data.DataError, match="wrong magic number"):
        data.read_idx(str(bad_magic))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(blob[:-100])
    with pytest.raises(data.DataError, match="truncated"):
        data.read_idx(str(truncated))


class Server:
    """A static file server on 127.0.0.1 for the download tests."""

    def __init__(self, directory):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=directory, **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path, images_u8, monkeypatch):
    """A mirror serving four small IDX files, with their checksums registered as MNIST's."""
    served = tmp_path / "served"
    served.mkdir()
    files = {}
    for name in data.MNIST_FILES:
        array = images_u8 if "images" in name else np.arange(5, dtype=np.uint8)
        blob = gzip.compress(idx_bytes(array))
        (served / name).write_bytes(blob)
        files[name] = hashlib.sha256(blob).hexdigest()
    monkeypatch.setitem(data.IMAGE_SETS, "mnist", (files, []))
    server = Server(str(served))
    yield server, served
    server.close()


def test_download_from_a_mirror(tmp_path, mirror, images_u8):
    server, _ = mirror
    dead = "http://127.0.0.1:9/"                     # nothing listens there: the next mirror is tried
    x = data.idx_images("mnist", cache_dir=str(tmp_path / "cache"), mirrors=[dead, server.url])
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0] * 255, images_u8)
    assert sorted(os.listdir(tmp_path / "cache" / "mnist")) == sorted(data.MNIST_FILES)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mirror):
    server, served = mirror
    (served / "train-images-idx3-ubyte.gz").write_bytes(b"corrupted")
    with pytest.raises(data.DataError, match="SHA-256"):
        data.idx_images("mnist", cache_dir=str(tmp_path / "cache"), mirrors=[server.url])
    left = os.listdir(tmp_path / "cache" / "mnist")
    assert "train-images-idx3-ubyte.gz" not in left and not [f for f in left if ".part" in f]


def test_offline_message(tmp_path, monkeypatch):
    monkeypatch.setitem(data.IMAGE_SETS, "mnist", (data.MNIST_FILES, ["http://127.0.0.1:9/"]))
    with pytest.raises(data.DataError, match="--data-dir.*--data digits"):
        data.idx_images("mnist", cache_dir=str(tmp_path))


def test_data_dir(tmp_path, images_u8):
    for name in data.MNIST_FILES:
        (tmp_path / name[:-3]).write_bytes(idx_bytes(images_u8 if "images" in name else np.arange(5)))
    assert data.idx_images("mnist", n=3, data_dir=str(tmp_path)).shape == (3, 1, 28, 28)
    with pytest.raises(data.DataError, match="lacks"):
        data.idx_images("mnist", data_dir=str(tmp_path / "nowhere"))


def test_digits():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install numpy-ddpm[digits])")
    x = data.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1


def test_convnet_learns_and_samples_on_digits():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    x, _, _ = data.standardise(data.digits(200))
    x = backend.asarray(x)
    model = convnet(1, width=16, seed=0)
    s, opt, rng = Schedule(), Adam(model.flat_parameters(), lr=2e-3), backend.default_rng(0)
    losses = [float(train_step(model, opt, x[k % 8 * 25:(k % 8 + 1) * 25], s, rng)) for k in range(40)]
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    small = Schedule(T=20)
    out = generate(model, (3, 1, 8, 8), small, rng)
    assert out.shape == (3, 1, 8, 8) and np.all(np.isfinite(to_np(out)))


def test_mnist_demo_end_to_end(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    out = str(tmp_path / "run")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "demos", "mnist.py"), "--nb-samples", "50",
                             "--nb-epochs", "1", "--nb-generated", "4", "--width", "8", "--kernel-size", "3",
                             "--out", out, "--no-window", "--no-progress", "--trajectory"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("images.png", "samples.npy", "checkpoint.npz", "trajectory.png", "trajectory.gif"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert np.load(os.path.join(out, "samples.npy")).shape == (4, 1, 8, 8)


def test_mnist_demo_recipe_fast(tmp_path):
    """--recipe fast sets the training flags not given explicitly (a tiny run: one epoch, width 8)."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    fast = runpy.run_path(os.path.join(ROOT, "demos", "mnist.py"))["FAST"]          # main() does not run
    out = str(tmp_path / "run")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "demos", "mnist.py"), "--recipe", "fast",
                             "--nb-samples", "50", "--nb-epochs", "1", "--nb-generated", "4", "--width", "8",
                             "--kernel-size", "3", "--no-bound", "--out", out, "--no-window", "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    config = checkpoint.load(os.path.join(out, "checkpoint.npz"))[1]["config"]
    assert config["nb_epochs"] == 1                                             # the explicit flag wins
    for key in ("batch_size", "learning_rate", "lr_schedule", "warmup_steps", "ema_warmup"):
        assert config[key] == fast[key], key


def test_mnist_demo_user_errors(tmp_path):
    for args, expected in ((["--data", "cifar"], "unknown image data set 'cifar'"),
                           (["--kernel-size", "4"], "--kernel-size a positive odd number")):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "demos", "mnist.py"), *args,
                                 "--out", str(tmp_path), "--no-window"], capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0]
