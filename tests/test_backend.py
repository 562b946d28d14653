import ast
import pathlib

import pytest

from numpy_ddpm import backend

from conftest import CUPY_SKIP

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "numpy_ddpm"


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_only_backend_imports_numpy_or_cupy():
    offenders = {}
    for path in PACKAGE.glob("*.py"):
        if path.name == "backend.py":
            continue
        bad = {m for m in imported_modules(path)} & {"numpy", "cupy", "torch"}
        if bad:
            offenders[path.name] = bad
    assert not offenders, offenders
    assert "numpy" in set(imported_modules(PACKAGE / "backend.py"))


@pytest.mark.skipif(CUPY_SKIP is None, reason="cupy and a GPU are present here")
def test_cupy_without_gpu_is_one_clear_error():
    with pytest.raises(backend.BackendError) as info:
        backend.use("cupy")
    message = str(info.value)
    assert "\n" not in message and ("cupy" in message.lower() or "cuda" in message.lower())
    assert backend.name == "numpy" and backend.xp.__name__ == "numpy"


def test_unknown_backend():
    with pytest.raises(backend.BackendError, match="choose 'numpy' or 'cupy'"):
        backend.use("tpu")


def test_precision_context():
    assert backend.dtype.__name__ == "float32"
    with backend.precision("float64"):
        assert backend.dtype.__name__ == "float64"
    assert backend.dtype.__name__ == "float32"


DEVICE_PATH = ["layers.py", "im2col.py", "optim.py", "diffusion.py", "schedule.py", "models.py", "train.py"]


def test_device_path_never_touches_host_numpy():
    """The modules that training and sampling run through use only `backend.xp` (numpy or
    cupy) and backend helpers: a host numpy call there (backend.np.asarray of a device array,
    say) would fail or sync on cupy. The strict stand-in (test_strict.py) checks them at run
    time; this reads their source."""
    for name in DEVICE_PATH:
        source = (PACKAGE / name).read_text()
        assert "backend.np" not in source, name
