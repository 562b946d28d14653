"""The denoisers eps_theta: how t and labels enter (conditioning.py), the lecture's MLP and
conv net (lecture.py). Every model carries `description`, {"name": ..., "kwargs": {...}}, which
checkpoints store and `build` turns back into the model."""

import re

from .. import backend
from ..errors import Error
from ..nn import checkpoint
from .conditioning import LabelAppender, TimeAppender
from .lecture import Denoiser, convnet, mlp
from .unet import UNet, UNetError, check_unet, unet

BUILDERS = {"mlp": mlp, "convnet": convnet, "unet": unet}


class ModelError(Error, ValueError):
    """A model description that names no model, or arguments its builder does not take."""


def build(description, seed=0):
    """The model of a description: {"name": "mlp", "kwargs": {"dim": 2, "hidden": 256}}, or the
    string "mlp(dim=2, hidden=256)" that checkpoints held before (read without eval)."""
    if isinstance(description, str):
        description = parse_description(description)
    name, kwargs = description.get("name"), description.get("kwargs", {})
    if name not in BUILDERS:
        raise ModelError(f"unknown model {name!r}; the models are: {', '.join(BUILDERS)}")
    try:
        return BUILDERS[name](**kwargs, seed=seed)
    except TypeError as error:
        raise ModelError(f"models.{name} cannot be built from {kwargs}: {error}") from None


def parse_description(text):
    """{"name": "mlp", "kwargs": {"dim": 2, "hidden": 256}} from "mlp(dim=2, hidden=256)",
    name(key=int, ...): the model descriptions of checkpoints written before version 2."""
    match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", str(text))
    if match is None:
        raise ModelError(f"the model description {text!r} is not name(key=int, ...)")
    kwargs = {}
    for part in filter(None, (p.strip() for p in match.group(2).split(","))):
        key, equals, value = (s.strip() for s in part.partition("="))
        if not equals or not key.isidentifier() or re.fullmatch(r"-?\d+", value) is None:
            raise ModelError(f"the model description {text!r} is not name(key=int, ...)")
        kwargs[key] = int(value)
    return {"name": match.group(1), "kwargs": kwargs}


def load(path, weights="ema"):
    """(model, meta) from a checkpoint of the demos: the model its description builds, with its
    EMA weights (what the demos sample with) or, with weights="params", the raw ones."""
    arrays, meta = checkpoint.load(path)
    try:
        model = build(meta.get("model", ""))
    except ModelError as error:
        raise checkpoint.CheckpointError(f"{path}: {error}") from None
    if weights not in arrays:
        raise checkpoint.CheckpointError(f"{path} holds no {weights!r} weights")
    if arrays[weights].shape != model.flat_params.shape:
        raise checkpoint.CheckpointError(f"{path} does not match the parameter count of {meta['model']}")
    model.flat_params[...] = backend.asarray(arrays[weights])
    return model, meta


__all__ = ["BUILDERS", "Denoiser", "LabelAppender", "ModelError", "TimeAppender", "UNet", "build", "convnet",
           "load", "mlp", "parse_description", "unet", "UNetError", "check_unet"]
