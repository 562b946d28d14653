"""Image quality as a number: a Fréchet distance in a digit classifier's features, beside its floor.

FID (Heusel et al., 2017) fits a Gaussian to a classifier's features of real images and one to
those of generated images, and reports the Fréchet (2-Wasserstein) distance between them:

    FD = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))

Inception does not fit 8x8 digits and cannot be downloaded here, so the features are the last
hidden layer of our own classifier (classifier.py). As for the toy sets (metrics.py), the
distance is reported beside its floor, the same distance between two disjoint sets of real
held-out images of the same size: FD / floor near 1 means the samples are as close to the
data as a fresh draw of it. The classifier's predictions give two more numbers: the entropy
of the mean prediction (log 10 = 2.30 nats when all ten classes are equally present) and the
mean entropy of each prediction (0 when every image is a clear digit).

    python -m numpy_ddpm.quality --samples runs/mnist/samples.npy --data digits [--labels labels.npy]

(the command line is numpy_ddpm/quality.py's)
"""

import math
import time

from .. import backend, cpu, data
from .classifier import labelled_split, load_or_train, softmax

# The Fréchet distance -------------------------------------------------------------------------

def sqrtm_psd(a):
    """The symmetric positive semi-definite square root of a symmetric PSD matrix a (D, D).

    a = V diag(lambda) V^T (symmetric eigendecomposition), sqrt(a) = V diag(sqrt(lambda)) V^T.
    Rounding can leave eigenvalues of a singular matrix slightly negative; they are set to 0.
    """
    np = backend.np
    eigenvalues, vectors = np.linalg.eigh((a + a.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def frechet_distance(mu_1, s_1, mu_2, s_2):
    """FD between the Gaussians N(mu_1, s_1) and N(mu_2, s_2), means (D,), covariances (D, D).

    tr((S_1 S_2)^(1/2)) is computed as tr((R S_2 R)^(1/2)) with R = S_1^(1/2): R S_2 R is
    similar to S_1 S_2 (S_1 S_2 = R (R S_2 R) R^-1), so it has the same eigenvalues, but it is
    symmetric and PSD by construction. That makes it stable when the covariances are near
    singular, as they are with fewer samples than features: a general matrix square root of
    the non-symmetric S_1 S_2 (scipy's sqrtm, a Schur method) then returns complex parts and
    needs an offset added to the diagonals, while a symmetric eigendecomposition is backward
    stable, its eigenvalues real, and the ones rounding pushes below 0 are clipped to 0, an
    error of at most D sqrt(eps |S|) on the trace.
    """
    np = backend.np
    root_1 = sqrtm_psd(s_1)
    eigenvalues = np.linalg.eigvalsh(root_1 @ s_2 @ root_1)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu_1 - mu_2
    return float(diff @ diff + np.trace(s_1) + np.trace(s_2) - 2 * trace_sqrt)


def gaussian_fit(features):
    """Mean (D,) and covariance (D, D) of features (N, D), in float64."""
    np = backend.np
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def fd(features_1, features_2):
    """FD between Gaussians fitted to two sets of feature vectors (N, D) and (M, D)."""
    return frechet_distance(*gaussian_fit(features_1), *gaussian_fit(features_2))


def distance_and_floor(sample_features, reference_features, repeats=10, seed=0):
    """(FD, floor) averaged over `repeats` random draws: each draw takes m = min(N, M // 2)
    samples and two disjoint sets A and B of m reference features; FD(samples, A) and the floor
    FD(B, A). The same size on both sides matters: FD grows as the sets shrink (a covariance
    estimated from few samples), so only equal sizes compare."""
    rng = backend.host_rng(seed)
    m = min(len(sample_features), len(reference_features) // 2)
    if m < 2:
        raise data.DataError("the Fréchet distance needs at least 2 samples and 4 reference images")
    distance = floor = 0.0
    for _ in range(repeats):
        order = rng.permutation(len(reference_features))
        a, b = reference_features[order[:m]], reference_features[order[m:2 * m]]
        samples = sample_features[rng.permutation(len(sample_features))[:m]]
        distance += fd(samples, a) / repeats
        floor += fd(b, a) / repeats
    return distance, floor


# What the classifier says -------------------------------------------------------------------

def entropy(p):
    """Entropy in nats of each row of p (N, K)."""
    np = backend.np
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=-1)


def entropies(p):
    """(entropy of the mean prediction, mean entropy of each prediction) of p (N, 10)."""
    return float(entropy(p.mean(axis=0))), float(entropy(p).mean())


def label_agreement(p, labels):
    """The fraction of images whose most likely class is the label asked for, labels (N,)."""
    return float((p.argmax(axis=1) == backend.np.asarray(labels)).mean())


# The report -----------------------------------------------------------------------------------

def report(samples, data_name, labels=None, data_dir=None, cache_dir=None, reference=None, repeats=10, log=None):
    """The quality numbers of host images `samples` (N, 1, H, W) in the data's [0, 1] scale
    (clipped to it) against the held-out images of `data_name`, or against `reference`:
    {fd, floor, ratio, entropy_of_mean, mean_entropy, accuracy (the classifier's held-out
    accuracy), n, seconds, and with labels (N,) label_agreement}."""
    start = time.perf_counter()
    classifier = load_or_train(data_name, data_dir, cache_dir, log=log)
    if reference is None:
        reference, _ = labelled_split(data_name, "held_out", data_dir, cache_dir)
    if samples.ndim != 4 or samples.shape[1:] != reference.shape[1:]:
        raise data.DataError(f"the samples have shape {tuple(samples.shape)}, not (N,) + "
                             f"{tuple(reference.shape[1:])} like the images of {data_name}")
    sample_features, sample_logits = classifier.features_and_logits(samples)
    reference_features, _ = classifier.features_and_logits(reference)
    with cpu.blas_threads(1):       # 64 x 64 matrices: two threads only contend for the cores
        distance, floor = distance_and_floor(sample_features, reference_features, repeats)
    p = softmax(sample_logits)                                         # (N, 10)
    entropy_of_mean, mean_entropy = entropies(p)
    result = {"fd": distance, "floor": floor, "ratio": distance / floor, "entropy_of_mean": entropy_of_mean,
              "mean_entropy": mean_entropy, "accuracy": classifier.accuracy, "n": len(samples)}
    if labels is not None:
        result["label_agreement"] = label_agreement(p, labels)
    result["seconds"] = time.perf_counter() - start
    return result


def summary(result):
    """One line for the demos' output."""
    line = (f"quality: FD {result['fd']:.3g} / floor {result['floor']:.3g} = {result['ratio']:.2f}; "
            f"entropy of the mean prediction {result['entropy_of_mean']:.2f} (all ten classes: "
            f"{math.log(10):.2f}); mean entropy {result['mean_entropy']:.2f} (clear digits: 0)")
    if "label_agreement" in result:
        line += f"; label agreement {result['label_agreement']:.0%}"
    return line + f" ({result['n']} samples, classifier held-out accuracy {result['accuracy']:.1%})"
