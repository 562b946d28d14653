"""Images: MNIST and Fashion-MNIST (IDX files, downloaded once and checked, or read from a
directory), and the 8x8 digits that ship inside scikit-learn.

Images are float32 arrays (N, 1, H, W) with pixels in [0, 1]; the training code standardises
them by their mean and std, as in the lecture.
"""

import gzip
import hashlib
import os
import urllib.error
import urllib.request

from .. import backend
from .errors import DataError, require

IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {   # file -> SHA-256
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
IMAGE_SETS = {
    "mnist": (MNIST_FILES, ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                            "https://storage.googleapis.com/cvdf-datasets/mnist/",
                            "http://yann.lecun.com/exdb/mnist/"]),
    "fashion_mnist": (FASHION_MNIST_FILES, ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                                            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"]),
}


def read_idx(path):
    """Parse an IDX file (gzipped or not): magic 0x0000TTDD (T the type, D the number of
    dimensions), D big-endian int32 sizes, then the data. Returns a host array."""
    np = backend.np
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as file:
            blob = file.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path} is not a readable IDX file ({error})") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (wrong magic number)")
    dims = blob[3]
    if len(blob) < 4 + 4 * dims:
        raise DataError(f"{path} is truncated (its header is incomplete)")
    shape = tuple(int(d) for d in np.frombuffer(blob, ">i4", dims, 4))
    dtype = np.dtype(IDX_TYPES[blob[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(blob) - 4 - 4 * dims != expected:
        raise DataError(f"{path} is truncated or padded: {len(blob) - 4 - 4 * dims} bytes of data "
                        f"for a shape {shape} that needs {expected}")
    return np.frombuffer(blob, dtype, offset=4 + 4 * dims).reshape(shape)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url, path, expected_sha256, timeout=30):
    """Fetch url into path: written under a temporary name, checked, then renamed, so a
    failed or corrupt download leaves nothing behind."""
    temporary = f"{path}.part-{os.getpid()}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(temporary, "wb") as file:
            while block := response.read(1 << 20):
                file.write(block)
        if sha256(temporary) != expected_sha256:
            raise DataError(f"the file downloaded from {url} does not have the expected SHA-256 checksum")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def default_cache_dir():
    return os.environ.get("NUMPY_DDPM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "numpy-ddpm"))


def _present(data_dir, file):
    return os.path.exists(os.path.join(data_dir, file)) or os.path.exists(os.path.join(data_dir, file[:-3]))


def test_split_only(name, data_dir):
    """Whether `data_dir` holds the test split of `name` ("t10k-...") without its training split:
    then the demos train on its first TEST_ONLY_TRAIN images and hold out the rest."""
    files, _ = IMAGE_SETS[name]
    return (data_dir is not None and all(_present(data_dir, f) for f in files if f.startswith("t10k"))
            and not any(_present(data_dir, f) for f in files if f.startswith("train")))


TEST_ONLY_TRAIN = 9000      # with only the test split: its first 9,000 images train, its last 1,000 are held out


def fetch_image_set(name, data_dir=None, cache_dir=None, mirrors=None, split=None):
    """The directory that holds the IDX files of `name` ("mnist" or "fashion_mnist"): `data_dir`
    if given (files used as they are; the two of `split`, "train" or "t10k", or all four), else
    the cache, downloading what is missing from the mirrors in turn, each file checked against
    its SHA-256."""
    files, default_mirrors = IMAGE_SETS[name]
    if data_dir is not None:
        needed = [f for f in files if split is None or f.startswith(split)]
        missing = [f for f in needed if not _present(data_dir, f)]
        if missing:
            raise DataError(f"{data_dir} lacks {', '.join(missing)} (gzipped or not)")
        return data_dir
    directory = os.path.join(cache_dir or default_cache_dir(), name)
    os.makedirs(directory, exist_ok=True)
    for file, checksum in files.items():
        path = os.path.join(directory, file)
        if os.path.exists(path):
            continue
        errors = []
        for mirror in mirrors or default_mirrors:
            try:
                download(mirror + file, path, checksum)
                break
            except (urllib.error.URLError, OSError, DataError) as error:
                errors.append(f"{mirror}: {getattr(error, 'reason', error)}")
        else:
            raise DataError(f"{name} is not on disk and could not be downloaded ({'; '.join(errors)}); "
                            f"pass --data-dir with the IDX files, or use --data digits offline")
    return directory


def _idx_path(directory, file):
    """The IDX file in `directory`, gzipped or not."""
    path = os.path.join(directory, file)
    return path if os.path.exists(path) else path[:-3]


def idx_images(name, n=None, data_dir=None, cache_dir=None, mirrors=None, labels=False, split="train"):
    """The first n images of MNIST's or Fashion-MNIST's split "train" (60000) or "t10k" (10000),
    (n, 1, 28, 28) in [0, 1]; with labels=True, the pair (images, labels (n,) integers in 0..9)."""
    directory = fetch_image_set(name, data_dir, cache_dir, mirrors, split)
    path = _idx_path(directory, f"{split}-images-idx3-ubyte.gz")
    images = read_idx(path)
    if images.ndim != 3:
        raise DataError(f"{path} holds arrays of shape {images.shape}, not a stack of images")
    images = (images[:n] if n else images).astype(backend.np.float32) / 255
    if not labels:
        return images[:, None]
    path = _idx_path(directory, f"{split}-labels-idx1-ubyte.gz")
    classes = read_idx(path)
    if classes.ndim != 1 or len(classes) < len(images):
        raise DataError(f"{path} holds labels of shape {classes.shape}, not one for each of the "
                        f"{len(images)} images")
    classes = classes[:len(images)].astype(backend.np.int64)
    if classes.min() < 0 or classes.max() > 9:
        raise DataError(f"{path} holds labels outside 0..9")
    return images[:, None], classes


def digits(n=None, labels=False):
    """The 1797 8x8 handwritten digits that ship inside scikit-learn, (n, 1, 8, 8) in [0, 1];
    with labels=True, the pair (images, labels), labels (n,) integers in 0..9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set needs scikit-learn: pip install 'numpy-ddpm[digits]'") from None
    bunch = load_digits()
    images = (bunch.images.astype(backend.np.float32) / 16)[:n, None]
    return (images, bunch.target[:n].astype(backend.np.int64)) if labels else images


IMAGES = ("digits", "mnist", "fashion_mnist")


DIGITS_HELD_OUT = 297       # the last 297 of the 1797 digits: the image demo trains on the first 1500


def held_out(name, data_dir=None, cache_dir=None, labels=False):
    """Images no demo trains on, for the bound and the quality measure: the last 297 digits, or
    the 10,000 of MNIST's or Fashion-MNIST's test split (its last 1,000 when `data_dir` holds
    only that split, whose first 9,000 then train); with labels=True, (images, labels)."""
    require(name, IMAGES, "image data set")
    if name != "digits" and test_split_only(name, data_dir):
        loaded = idx_images(name, None, data_dir, cache_dir, labels=labels, split="t10k")
        return tuple(a[TEST_ONLY_TRAIN:] for a in loaded) if labels else loaded[TEST_ONLY_TRAIN:]
    if name == "digits":
        loaded = digits(labels=labels)
        return tuple(a[-DIGITS_HELD_OUT:] for a in loaded) if labels else loaded[-DIGITS_HELD_OUT:]
    return idx_images(name, None, data_dir, cache_dir, labels=labels, split="t10k")


def images(name, n=None, data_dir=None, cache_dir=None, labels=False):
    """The first n training images of `name`, (n, 1, H, W) in [0, 1]; with labels=True,
    (images, labels (n,)). From a `data_dir` with only the test split: its first 9,000 images
    at most (test_split_only)."""
    require(name, IMAGES, "image data set")
    if name == "digits":
        return digits(n, labels)
    if test_split_only(name, data_dir):
        n = TEST_ONLY_TRAIN if n is None else min(n, TEST_ONLY_TRAIN)
        return idx_images(name, n, data_dir, cache_dir, labels=labels, split="t10k")
    return idx_images(name, n, data_dir, cache_dir, labels=labels)
