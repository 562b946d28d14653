"""Shared fixtures: tests run on every backend that can run here (numpy always; cupy when it
imports and sees a CUDA device, else those cases skip with the reason)."""

import numpy as np
import pytest

from numpy_ddpm import backend


def _cupy_skip_reason():
    try:
        import cupy
    except ImportError:
        return "cupy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as error:  # driver missing or broken
        return f"no usable CUDA device ({error})"
    return None


CUPY_SKIP = _cupy_skip_reason()
BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.skipif(CUPY_SKIP is not None, reason=str(CUPY_SKIP)))]


@pytest.fixture(params=BACKENDS)
def xp_backend(request):
    """Run the test under each backend; restores numpy afterwards."""
    backend.use(request.param)
    yield request.param
    backend.use("numpy")


@pytest.fixture
def float64():
    with backend.precision("float64"):
        yield


def to_np(a):
    return np.asarray(backend.to_numpy(a))
