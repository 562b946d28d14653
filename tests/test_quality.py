"""The image-quality measure: the Fréchet distance and its matrix square root, the classifiers
(trained once per test session into a temporary cache), and the measure on real, noisy and
blurred digits."""

import gzip
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from numpy_ddpm import backend, quality
from numpy_ddpm.evaluation import classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_rotation(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_closed_form():
    """For covariances with common eigenvectors Q diag(a) Q^T and Q diag(b) Q^T the distance is
    |mu_1 - mu_2|^2 + sum (sqrt(a) - sqrt(b))^2; fitted to large samples it comes close to it."""
    rng = np.random.default_rng(0)
    d = 5
    q = random_rotation(rng, d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu_1, mu_2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu_1 - mu_2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    s_1, s_2 = (q * a) @ q.T, (q * b) @ q.T
    assert quality.frechet_distance(mu_1, s_1, mu_2, s_2) == pytest.approx(expected, rel=1e-10)
    x_1 = mu_1 + (rng.standard_normal((100_000, d)) * np.sqrt(a)) @ q.T
    x_2 = mu_2 + (rng.standard_normal((100_000, d)) * np.sqrt(b)) @ q.T
    assert quality.fd(x_1, x_2) == pytest.approx(expected, rel=0.03)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(1)
    for n, d in ((500, 8), (10, 32)):          # the second: rank 9 covariances of 32 features
        x = rng.standard_normal((n, d)) * rng.uniform(0.1, 5, d)
        distance = quality.fd(x, x)
        assert abs(distance) < 1e-6 * np.trace(np.cov(x, rowvar=False)), (n, d, distance)
    assert quality.fd(x, x + 1) == pytest.approx(d, rel=1e-6)   # a shift by 1 in each feature


def denman_beavers(a, steps=50):
    """The square root of a by the Denman-Beavers iteration (no eigendecomposition):
    Y <- (Y + Z^-1) / 2, Z <- (Z + Y^-1) / 2 from Y = a, Z = I; Y -> a^(1/2)."""
    y, z = a.copy(), np.eye(len(a))
    for _ in range(steps):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    return y


def test_matrix_square_root():
    rng = np.random.default_rng(2)
    m = rng.standard_normal((6, 6))
    a = m @ m.T + 0.1 * np.eye(6)
    root = quality.sqrtm_psd(a)
    np.testing.assert_allclose(root, root.T, atol=1e-12)
    assert np.linalg.eigvalsh(root).min() > 0
    np.testing.assert_allclose(root @ root, a, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(root, denman_beavers(a), rtol=1e-8, atol=1e-10)
    singular = m[:, :2] @ m[:, :2].T                            # rank 2 of 6
    root = quality.sqrtm_psd(singular)
    assert np.all(np.isfinite(root))
    np.testing.assert_allclose(root @ root, singular, atol=1e-7)


def test_entropies_and_label_agreement():
    p = np.eye(10)[np.arange(20) % 10]                         # each class twice, each clear
    assert quality.entropies(p) == pytest.approx((math.log(10), 0.0), abs=1e-12)
    assert quality.entropies(np.full((4, 10), 0.1)) == pytest.approx((math.log(10), math.log(10)))
    assert quality.label_agreement(p, np.arange(20) % 10) == 1.0
    assert quality.label_agreement(p, (np.arange(20) + 1) % 10) == 0.0


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    cache = str(tmp_path_factory.mktemp("cache"))
    return cache, classifier.load_or_train("digits", cache_dir=cache)


def test_digits_classifier_trains_and_is_cached(digits_cache):
    cache, trained = digits_cache
    assert not trained.from_cache
    assert trained.losses[-1] < 0.1 * trained.losses[0]
    # 96.0% here (96.0 to 96.3% over seeds 0 to 5) on a split that holds out other writers (see classifier.py)
    assert trained.accuracy >= 0.95
    mtime = os.path.getmtime(trained.path)
    loaded = classifier.load_or_train("digits", cache_dir=cache)
    assert loaded.from_cache and loaded.path == trained.path and os.path.getmtime(loaded.path) == mtime
    np.testing.assert_array_equal(loaded.model.flat_params, trained.model.flat_params)
    assert loaded.accuracy == trained.accuracy


class Highest:
    """A stand-in generator whose `uniform` draws the top of its range, so the transform is known."""

    def uniform(self, low, high, size):
        return np.full(size, high)


def test_random_similarity_moves_and_turns_images():
    images = np.random.default_rng(6).uniform(size=(2, 5, 5)).astype(np.float32)
    moved = classifier.random_similarity(images, np.random.default_rng(7), 0, 0, 0)
    assert moved.dtype == np.float32
    np.testing.assert_array_equal(moved, images)
    padded = np.pad(images, ((0, 0), (0, 1), (0, 1)))                        # zeros come in from outside
    np.testing.assert_allclose(classifier.random_similarity(images, Highest(), 1, 0, 0), padded[:, 1:, 1:])
    np.testing.assert_allclose(classifier.random_similarity(images, Highest(), 0.5, 0, 0),  # q = p + 1/2
                               sum(padded[:, i:i + 5, j:j + 5] for i in (0, 1) for j in (0, 1)) / 4, rtol=1e-6)
    np.testing.assert_allclose(classifier.random_similarity(images, Highest(), 0, 0, np.pi / 2),
                               np.rot90(images, k=-1, axes=(1, 2)), atol=1e-6)   # a quarter turn
    grown = classifier.random_similarity(images, Highest(), 0, np.log(2), 0)    # twice as large: q = p / 2 + c
    np.testing.assert_allclose(grown[:, ::2, ::2], images[:, 1:4, 1:4], rtol=1e-6)


def idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def bars(labels, rng):
    """28x28 images of class k: a bright horizontal bar at rows 2k+4 and 2k+5, plus noise."""
    images = rng.integers(0, 60, (len(labels), 28, 28))
    for n, k in enumerate(labels):
        images[n, 2 * k + 4:2 * k + 6, 4:24] = 255
    return images


def test_idx_classifier_path_on_synthetic_files(tmp_path):
    """MNIST's path (labels from the IDX files, 60000/10000 split) on tiny files written here."""
    rng = np.random.default_rng(3)
    for split, n in (("train", 300), ("t10k", 60)):
        labels = rng.integers(0, 10, n)
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(idx_bytes(bars(labels, rng)))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(classifier.labelled_split("mnist", "held_out", str(tmp_path))[1], labels)
    settings = dict(hidden=(16, 8), nb_epochs=10, batch_size=30, learning_rate=3e-3, seed=0)
    trained = classifier.load_or_train("mnist", data_dir=str(tmp_path), cache_dir=str(tmp_path), settings=settings)
    assert trained.accuracy > 0.9 and os.path.exists(trained.path)
    features, logits = trained.features_and_logits(classifier.labelled_split("mnist", "held_out", str(tmp_path))[0])
    assert features.shape == (60, 8) and logits.shape == (60, 10)
    assert classifier.load_or_train("mnist", data_dir=str(tmp_path), cache_dir=str(tmp_path),
                                    settings=settings).from_cache


def box_blur(images):
    """3x3 mean filter with zero padding."""
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = images.shape[2:]
    return sum(padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9


def test_real_images_score_near_the_floor_and_damaged_ones_worse(digits_cache):
    """Half the held-out images (shuffled: they are ordered by writer) against the other half:
    FD / floor about 1; noise raises it with its level, and a blur raises it too."""
    cache, _ = digits_cache
    held_out, _ = classifier.labelled_split("digits", "held_out")
    order = np.random.default_rng(4).permutation(len(held_out))
    samples, reference = held_out[order[:148]], held_out[order[148:]]

    def ratio(images):      # on one BLAS thread: two took 2 to 7 s here for 64 features on a busy 2-core machine
        with backend.blas_threads(1):
            return quality.report(images, "digits", cache_dir=cache, reference=reference)["ratio"]
    real = ratio(samples)
    assert 0.7 < real < 1.3
    noise = np.random.default_rng(5).standard_normal(samples.shape)
    noisy = [ratio(np.clip(samples + level * noise, 0, 1)) for level in (0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip([real] + noisy, noisy)), (real, noisy)
    assert noisy[-1] > 2 * real
    assert ratio(box_blur(samples)) > 1.5 * real


def test_command(digits_cache, tmp_path):
    cache, _ = digits_cache
    held_out, labels = classifier.labelled_split("digits", "held_out")
    np.save(tmp_path / "samples.npy", held_out[:50])
    np.save(tmp_path / "labels.npy", labels[:50])
    env = {**os.environ, "NUMPY_DDPM_CACHE": cache}
    command = [sys.executable, "-m", "numpy_ddpm.quality", "--samples", str(tmp_path / "samples.npy"),
               "--data", "digits"]
    result = subprocess.run(command + ["--labels", str(tmp_path / "labels.npy")], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "quality: FD" in result.stdout and "label agreement" in result.stdout and "training" not in result.stdout
    np.save(tmp_path / "wrong.npy", np.zeros((5, 1, 28, 28)))
    result = subprocess.run(command[:4] + [str(tmp_path / "wrong.npy"), "--data", "digits"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "not (N,) + (1, 8, 8)" in lines[0]


def test_conv_classifier_passes_the_finite_difference_check():
    """The MNIST classifier's layers (stride-2 convolutions, Flatten, Linear), in float64 with
    dropout off: backward against central differences, input and every parameter."""
    from numpy_ddpm.nn import gradcheck
    rng = np.random.default_rng(6)
    with backend.precision("float64"):
        model = classifier.build((1, 8, 8), hidden=(6, 5), seed=0, kind="conv", channels=(3, 4, 4))
        x = backend.asarray(rng.standard_normal((2, 1, 8, 8)))
        errors = gradcheck.check(model, x, rng=rng, max_entries=40)
    assert set(errors) >= {"x", "0.weight", "2.weight", "4.weight", "7.weight"}, sorted(errors)
    assert max(errors.values()) < 1e-6, errors


MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="no ../shared/data/mnist (a user's clone has none)")
def test_conv_classifier_learns_real_mnist_digits():
    """A few hundred real digits: the conv classifier's training path (the random similarity
    transforms on 28x28 batches, stride-2 convolutions) learns far above chance in seconds."""
    images, labels = classifier.labelled_split("mnist", "train", MNIST_DIR)
    held_out, held_labels = classifier.labelled_split("mnist", "held_out", MNIST_DIR)
    assert len(images) == 9000 and len(held_out) == 1000
    settings = dict(classifier.SETTINGS["mnist"], channels=(8, 16, 16), hidden=(32, 16), nb_epochs=8, batch_size=32,
                    learning_rate=3e-3, lr_schedule="constant")
    model = classifier.build(images[0].shape, **settings)
    classifier.fit(model, images[:1000], labels[:1000], **settings)
    trained = classifier.Classifier(model, None, [], None, from_cache=False)
    assert classifier.accuracy(trained, held_out[:300], held_labels[:300]) > 0.8
