"""The GPU port: registers cupy with numpy_ddpm.backend. Imported only by backend.use("cupy")."""

from numpy_ddpm.backend import BackendError


def activate(device=None):
    """Import cupy, check that a CUDA device is usable, and return (cupy, fused kernels)."""
    try:
        import cupy
    except ImportError:
        raise BackendError("cupy is not installed: pip install 'numpy-ddpm[gpu]' "
                           "(cupy-cuda12x) or cupy-cuda13x to match your CUDA driver") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        raise BackendError(f"cupy is installed but no CUDA device is usable ({error}): "
                           "check the NVIDIA driver with nvidia-smi") from None
    if count == 0:
        raise BackendError("cupy is installed but this machine has no CUDA device")
    cupy.cuda.Device(device or 0).use()
    return cupy, {}
