"""PyTorch as an oracle for the whole U-Net: the paper's network written again with torch
modules (benchmarks/torch_unet.py), its parameters named as ours and loaded from ours by
name; its forward on the integer steps, and autograd's gradients of x and of every
parameter, against our forward on the network time and our backward."""

import os
import sys

import numpy as np
import pytest

from numpy_ddpm import backend
from numpy_ddpm.diffusion import Schedule
from numpy_ddpm.models import unet

from conftest import to_np

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from torch_unet import TorchUNet  # noqa: E402

CONFIG = dict(channels=1, base=16, multipliers=(1, 2), nb_blocks=2, attention=(4,), dropout=0.0, groups=8,
              nb_classes=3, image_size=8)


def parity_errors(dtype, seed=0, N=3):
    """{"y", "x", each parameter: max |ours - torch| / max |torch|}, from random weights (the
    zero-initialised convolutions and projections would hide what lies upstream of them)."""
    rng = np.random.default_rng(seed)
    with backend.precision(dtype):
        model = unet(**CONFIG)
        for _, param, _ in model.parameters():
            scale = 1 / np.sqrt(np.prod(param.shape[1:])) if param.ndim >= 2 else 0.5
            param[...] = backend.asarray(rng.standard_normal(param.shape) * scale, dtype=param.dtype)
        steps = rng.integers(0, 1000, N)
        x = rng.standard_normal((N, 1, 8, 8)).astype(dtype)
        labels = np.array([0, 2, 3])[:N]
        y = model.forward(backend.asarray(x), Schedule().network_time(backend.asarray(steps), dtype),
                          backend.asarray(labels))
        dy = rng.standard_normal(y.shape).astype(dtype)
        model.zero_grad()
        dx = model.backward(backend.asarray(dy))

    oracle = TorchUNet(**CONFIG).to(getattr(torch, dtype))
    oracle.load_state_dict({name: torch.tensor(to_np(param)) for name, param, _ in model.parameters()}, strict=True)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = oracle(x_t, torch.tensor(steps), torch.tensor(labels))
    y_t.backward(torch.tensor(dy))

    def rel(ours, theirs):
        theirs = theirs.detach().numpy()
        return float(np.abs(to_np(ours) - theirs).max() / np.abs(theirs).max())

    torch_params = dict(oracle.named_parameters())
    assert set(torch_params) == {name for name, _, _ in model.parameters()}
    errors = {"y": rel(y, y_t), "x": rel(dx, x_t.grad)}
    zero = {}
    for name, _, grad in model.parameters():
        if name.endswith(".k.bias"):        # zero in theory (the softmax cancels it): compare sizes
            zero[name] = max(float(np.abs(to_np(grad)).max()), float(torch_params[name].grad.abs().max()))
        else:
            errors[name] = rel(grad, torch_params[name].grad)
    return errors, zero


def test_unet_matches_torch_in_float64():
    errors, zero = parity_errors("float64")
    assert max(errors.values()) < 1e-10, errors
    assert max(zero.values()) < 1e-12, zero


def test_unet_matches_torch_in_float32():
    """float32 round-off: our convolutions run Winograd on the CPU, PyTorch its own kernels."""
    errors, zero = parity_errors("float32")
    assert errors["y"] < 1e-5, errors
    assert max(errors.values()) < 1e-4, errors
    assert max(zero.values()) < 1e-5, zero
