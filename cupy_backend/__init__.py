"""The GPU port: registers cupy with numpy_ddpm.backend. Imported only by backend.use("cupy").

The math stays in numpy_ddpm/, which runs unchanged on cupy arrays; this package adds what
only a GPU needs: the device check, a random generator drawing on the device, and fused
element-wise kernels (kernels.py) for the hot chains of the reference code.
"""

import os

from numpy_ddpm.backend import BackendError


def activate(device=None, tf32=False):
    """Import cupy, check that CUDA device `device` (default: $NUMPY_DDPM_DEVICE, else 0) is
    usable, make it current, and return (cupy, fused kernels, random generator factory).
    `tf32` lets cuBLAS use TensorFloat-32 for float32 products (faster, 10-bit mantissa);
    cupy reads that setting (CUPY_TF32) when it is first imported."""
    if tf32:
        os.environ["CUPY_TF32"] = "1"
    try:
        import cupy
    except ImportError:
        raise BackendError("cupy is not installed: pip install 'numpy-ddpm[gpu]' for CUDA 12 "
                           "(cupy-cuda12x) or 'numpy-ddpm[gpu-cuda13]' for CUDA 13") from None
    except Exception as error:      # a wheel built for another CUDA, a missing library
        raise BackendError(f"cupy is installed but cannot load ({error}): install the cupy wheel "
                           "that matches your CUDA driver (cupy-cuda12x or cupy-cuda13x)") from None
    if device is None:
        device = int(os.environ.get("NUMPY_DDPM_DEVICE", "0"))
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        raise BackendError(f"cupy is installed but finds no usable CUDA device ({_reason(error)}): "
                           "check the NVIDIA driver with nvidia-smi") from None
    if count == 0:
        raise BackendError("cupy is installed but this machine has no CUDA device")
    if not 0 <= device < count:
        raise BackendError(f"there is no CUDA device {device}: this machine has {count} "
                           f"(numbered 0 to {count - 1})")
    try:
        cupy.cuda.Device(device).use()
        (cupy.arange(4, dtype=cupy.float32) * 2).sum().item()      # compiles and runs a kernel
    except Exception as error:
        raise BackendError(f"CUDA device {device} cannot run cupy's kernels ({_reason(error)}): "
                           "the driver may be older than the CUDA of the cupy wheel") from None
    from . import kernels
    return cupy, kernels.REGISTRY, DeviceRandom


def _reason(error):
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class DeviceRandom:
    """The two draws the training and sampling code makes, from cuRAND on the device, with
    numpy's Generator interface (`integers`, `standard_normal`)."""

    def __init__(self, seed):
        import cupy
        self._state = cupy.random.RandomState(seed)

    def integers(self, low, high, size):
        return self._state.randint(low, high, size=size)

    def standard_normal(self, size, dtype=None):
        import cupy
        return self._state.standard_normal(size, dtype=dtype or cupy.float64)

    def random(self, size, dtype=None):
        import cupy
        return self._state.random_sample(size, dtype=dtype or cupy.float64)
