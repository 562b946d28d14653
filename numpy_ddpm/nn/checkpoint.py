"""Checkpoints: one .npz of named host arrays plus a JSON header, written atomically and read
without pickle."""

import json
import os
import zipfile

from .. import backend
from ..errors import Error


class CheckpointError(Error, ValueError):
    """A checkpoint that cannot be used: missing, truncated, foreign or from another model."""


FORMAT = "numpy-ddpm checkpoint 2"
READABLE = ("numpy-ddpm checkpoint 1", FORMAT)      # 1: the model described as "mlp(dim=2, hidden=256)"


def save(path, arrays, meta):
    """Write `arrays` (name -> array, any backend) and `meta` (JSON-able dict) to `path`:
    first to a temporary file beside it, then renamed, so a crash leaves the old file intact."""
    np = backend.np
    host = {name: backend.to_numpy(array) for name, array in arrays.items()}
    host["__meta__"] = np.array(json.dumps({"format": FORMAT, **meta}))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as file:
            np.savez(file, **host)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load(path):
    """(arrays, meta) from a checkpoint written by `save`, as host arrays."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with backend.np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as error:
        raise CheckpointError(f"{path} is not a readable numpy-ddpm checkpoint "
                              f"(truncated or foreign file: {error})") from None
    if meta.get("format") not in READABLE:
        raise CheckpointError(f"{path} is not a numpy-ddpm checkpoint")
    return arrays, meta
