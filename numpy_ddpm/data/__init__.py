"""Data sets: the lecture's toy samplers and the usual 2-D benchmarks (toy.py), and images:
MNIST, Fashion-MNIST and scikit-learn's 8x8 digits (images.py). Host numpy arrays only."""

from .errors import DataError, require
from .images import (DIGITS_HELD_OUT, FASHION_MNIST_FILES, IDX_TYPES, IMAGE_SETS, IMAGES, MNIST_FILES,
                     TEST_ONLY_TRAIN, default_cache_dir, digits, download, fetch_image_set, held_out, idx_images,
                     images, read_idx, sha256, test_split_only)
from .toy import (NB_CLASSES, TOY, checkerboard, circles, disc_grid, eight_gaussians, gaussian_mixture, moons, ramp,
                  require_classes, spiral, standardise, swiss_roll, toy, toy_labelled, two_discs)
