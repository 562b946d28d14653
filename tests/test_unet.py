"""The paper's U-Net (models/unet.py): its size, its output at initialisation, finite
differences of the whole network (input and every parameter, with dropout too), the errors a
user can cause, the step recovered from the network time, and a few steps of Algorithm 1."""

import json
import re

import numpy as np
import pytest

from numpy_ddpm import backend
from numpy_ddpm.diffusion import Schedule, train_step
from numpy_ddpm.models import BUILDERS, UNet, build, unet
from numpy_ddpm.models.conditioning import step_of
from numpy_ddpm.models.unet import Embedding, timestep_embedding
from numpy_ddpm.nn import gradcheck
from numpy_ddpm.nn.optim import Adam

from conftest import to_np

BOUND = 1e-6            # finite differences, float64
SMALL = dict(channels=1, base=8, multipliers=(1, 2), nb_blocks=1, attention=(4,), groups=2, image_size=8,
             nb_classes=3)


def randn(rng, *shape):
    return backend.asarray(rng.standard_normal(shape), dtype=backend.dtype)


def randomise(model, rng):
    """Random values in every parameter, weights N(0, 1 / fan_in), the others N(0, 1/4) (GroupNorm's
    gamma around 1): the zero-initialised convolutions and projections would pass no gradient
    upstream and hide a wrong backward behind them."""
    for name, param, _ in model.parameters():
        if param.ndim >= 2:
            scale = 1 / np.sqrt(np.prod(param.shape[1:]))
        else:
            scale = 0.5
        is_gamma = "norm" in name.split(".")[-2] and name.endswith(".weight")
        values = rng.standard_normal(param.shape) * scale + (1 if is_gamma else 0)
        param[...] = backend.asarray(values, dtype=param.dtype)
    return model


def inputs(rng, model, N=2, T=1000):
    """x, the network time of some integer steps, and labels (the last one "no label")."""
    size, channels = model.image_size, model.channels
    x = randn(rng, N, channels, size, size)
    t = Schedule(T).network_time(backend.asarray(rng.integers(0, T, N)), backend.dtype)
    labels = None if model.nb_classes is None else backend.asarray(np.arange(N) % (model.nb_classes + 1))
    return x, t, labels


class SameDraws:
    """A stand-in generator whose `random` gives the same uniforms for the same shape at every
    call, so each forward pass of a finite-difference check drops the same elements."""

    def __init__(self, seed):
        self.seed = seed

    def random(self, shape, dtype):
        return backend.asarray(np.random.default_rng([self.seed, *shape]).random(shape), dtype=dtype)


# Size and initialisation -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,expected", [
    (dict(base=32, multipliers=(1, 2, 2), nb_blocks=1, attention=(7,)), 1.1e6),
    (dict(base=64, multipliers=(1, 2, 2), nb_blocks=2, attention=(7,)), 6.5e6),
])
def test_parameter_counts(kwargs, expected):
    model = unet(**kwargs)
    count = model.flat_params.size
    assert count == sum(param.size for _, param, _ in model.parameters())
    assert abs(count - expected) < 0.05 * expected, count


def test_output_is_zero_at_initialisation_and_the_seed_decides(xp_backend):
    rng = np.random.default_rng(0)
    model = unet(**SMALL, seed=3)
    x, t, labels = inputs(rng, model)
    y = model.forward(x, t, labels, rng=backend.default_rng(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not np.any(to_np(y))                         # conv_out starts at zero
    again, other = unet(**SMALL, seed=3), unet(**SMALL, seed=4)
    np.testing.assert_array_equal(to_np(again.flat_params), to_np(model.flat_params))
    assert np.any(to_np(other.flat_params) != to_np(model.flat_params))
    # and the same weights on the host, whatever the backend
    backend.use("numpy")
    np.testing.assert_array_equal(to_np(unet(**SMALL, seed=3).flat_params), to_np(model.flat_params))


def test_description_builds_the_same_model():
    model = unet(**SMALL)
    assert BUILDERS["unet"] is unet and isinstance(model, UNet)
    assert model.nb_classes == 3 and model.takes == ("t", "labels", "rng")
    description = json.loads(json.dumps(model.description))
    assert description == {"name": "unet", "kwargs": {
        "channels": 1, "base": 8, "multipliers": [1, 2], "nb_blocks": 1, "attention": [4], "dropout": 0.1,
        "groups": 2, "nb_classes": 3, "image_size": 8, "T": 1000}}
    np.testing.assert_array_equal(to_np(build(description).flat_params), to_np(model.flat_params))
    unconditional = unet(base=8, multipliers=(1, 2), groups=2, image_size=8, attention=())
    assert "nb_classes" not in unconditional.description["kwargs"] and unconditional.nb_classes is None


def test_parameter_names_follow_the_paper():
    names = [name for name, _, _ in unet(**SMALL).parameters()]
    for name in ("temb.dense.0.weight", "temb.dense.1.bias", "label_emb.weight", "conv_in.weight",
                 "down.0.block.0.conv1.weight", "down.0.block.0.temb_proj.weight", "down.0.downsample.conv.weight",
                 "down.1.attn.0.q.weight", "mid.block_1.norm2.weight", "mid.attn_1.proj.bias",
                 "up.1.block.0.nin_shortcut.weight", "up.1.upsample.conv.weight", "up.0.block.1.conv2.bias",
                 "norm_out.weight", "conv_out.weight"):
        assert name in names, name
    assert not any(name.startswith("down.0.attn") or name.startswith("up.0.attn") for name in names)


# Finite differences of the whole network --------------------------------------------------------

def richardson_gradients(model, x, *args, seed, h=1e-3, max_entries=4):
    """{name: (analytic, numeric)} as gradcheck.gradients gives them, the numeric ones being its
    central differences D(h) and D(2h) combined by Richardson's extrapolation,
    (4 D(h) - D(2h)) / 3, whose error is O(h^4) instead of O(h^2). A whole network's gradients
    have entries 1e4 times below their array's largest; the plain difference's error, about
    1e-9 at its best h, would be 1e-5 of them, the extrapolation's is about 1e-11."""
    pairs, coarse = (gradcheck.gradients(model, x, *args, rng=np.random.default_rng(seed), h=step,
                                         max_entries=max_entries) for step in (h, 2 * h))
    return {name: (analytic, (4 * numeric - coarse[name][1]) / 3) for name, (analytic, numeric) in pairs.items()}


def check_unet(dropout, seed):
    """Worst relative error per parameter group (down.0.block.1.conv1.weight is in the group
    down.block.conv1.weight). Attention's k bias, whose gradient is zero in theory (the softmax
    cancels it), is checked to be zero to rounding instead."""
    rng = np.random.default_rng(seed)
    model = randomise(unet(**SMALL, dropout=dropout), rng)
    x, t, labels = inputs(rng, model)
    args = (t, labels) if dropout == 0 else (t, labels, SameDraws(seed))
    pairs = richardson_gradients(model, x, *args, seed=seed)
    assert set(pairs) == {"x"} | {name for name, _, _ in model.parameters()}
    errors = {}
    for name, (analytic, numeric) in pairs.items():
        if name.endswith(".k.bias"):
            assert np.abs(to_np(analytic)).max() < 1e-12 and np.abs(to_np(numeric)).max() < 1e-9, name
            continue
        group = re.sub(r"\.\d+", "", name)
        errors[group] = max(errors.get(group, 0.0), gradcheck.rel_error(analytic, numeric))
    return errors


@pytest.mark.parametrize("dropout,seed", [(0.0, 0), (0.3, 1)])
def test_gradients_of_the_whole_unet(float64, dropout, seed):
    errors = check_unet(dropout, seed)
    assert max(errors.values()) < BOUND, errors


def test_embedding_gradients(float64):
    rng = np.random.default_rng(5)
    layer = Embedding(4, 6, rng)
    labels = backend.asarray([0, 3, 3, 1, 0])
    y = layer.forward(labels)
    np.testing.assert_array_equal(to_np(y), to_np(layer.w)[[0, 3, 3, 1, 0]])
    dy = randn(rng, 5, 6)
    numeric = gradcheck.numerical_gradient(lambda: layer.forward(labels), layer.w, gradcheck.projection(dy))
    layer.zero_grad()
    layer.backward(dy)
    assert gradcheck.rel_error(layer.dw, numeric) < BOUND
    assert not np.any(to_np(layer.dw)[2])              # class 2 was not drawn: no gradient


# Errors a user can cause ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(multipliers=(1, 2, 2, 2)), r"4 levels cannot halve an image of size 28 each time \(28 -> 14 -> 7 -> 3.5\)"),
    (dict(attention=(16,)), r"attention at resolution 16: this U-Net's levels are at \[28, 14, 7\]"),
    (dict(groups=12), r"12 groups do not divide every channel count of this U-Net \(\[32, 64\]\)"),
    (dict(base=7), "base must be even"),
    (dict(nb_blocks=0), "must be positive integers"),
    (dict(nb_classes=0), "nb_classes must be a positive integer or None"),
    (dict(dropout=1.0), "dropout probability must be in"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        unet(**kwargs)


def test_bad_inputs():
    rng = np.random.default_rng(6)
    model = unet(**SMALL)
    x, t, labels = inputs(rng, model, N=3)
    cases = [
        (lambda: model.forward(x[0], t, labels), r"takes images of shape \(N, 1, 8, 8\), not \(1, 8, 8\)"),
        (lambda: model.forward(randn(rng, 3, 2, 8, 8), t, labels), r"not \(3, 2, 8, 8\)"),
        (lambda: model.forward(randn(rng, 3, 1, 16, 16), t, labels), r"not \(3, 1, 16, 16\)"),
        (lambda: model.forward(x, t[:2], labels), r"t must be a float or an array of shape \(3,\)"),
        (lambda: model.forward(x, t), "this U-Net is conditional: pass labels"),
        (lambda: model.forward(x, t, labels[:2]), r"labels must be an array of shape \(3,\)"),
        (lambda: model.forward(x, t, labels), "dropout while training needs a generator"),
        (lambda: unet(**{**SMALL, "nb_classes": None}).forward(x, t, labels), "unconditional"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    model.train(False)                                  # dropout off: no generator needed
    y = model.forward(x, 0.25, labels)
    np.testing.assert_array_equal(to_np(model.forward(x, 0.25, labels)), to_np(y))


# The step from the network time -----------------------------------------------------------------

def test_the_integer_step_is_recovered(xp_backend):
    """t = network_time(k) gives k back exactly for every k in 0..999, from a Python float and
    from float32 and float64 arrays, hence the embedding of the integer k."""
    T = 1000
    schedule, steps = Schedule(T), np.arange(T)
    for k in steps:
        assert float(step_of(schedule.network_time(int(k)), T)) == k
    model = unet(**SMALL, T=T)
    N = len(steps)
    expected = model.temb.forward(backend.asarray(steps - 0.5 * (T - 1)) / (T - 1), N)
    for dtype in ("float32", "float64"):
        t = schedule.network_time(backend.asarray(steps), dtype)
        np.testing.assert_array_equal(to_np(step_of(t, T)), steps)
        np.testing.assert_array_equal(to_np(model.temb.forward(t, N)), to_np(expected))
    # and the embedding is the paper's of the integer step
    sinusoids = backend.asarray(timestep_embedding(backend.asarray(steps, dtype=np.float64), 8), dtype=backend.dtype)
    dense0, act, dense1 = model.temb.dense[0], model.temb.act, model.temb.dense[1]
    np.testing.assert_array_equal(to_np(dense1.forward(act.forward(dense0.forward(sinusoids)))), to_np(expected))


def test_sinusoids_are_the_papers():
    steps = np.array([0.0, 1.0, 17.0, 999.0])
    emb = to_np(timestep_embedding(backend.asarray(steps), 8))
    frequencies = np.exp(-np.log(10000) * np.arange(4) / 3)           # 1, ..., 1e-4
    np.testing.assert_allclose(frequencies[[0, -1]], [1, 1e-4])
    np.testing.assert_allclose(emb, np.concatenate((np.sin(np.outer(steps, frequencies)),
                                                     np.cos(np.outer(steps, frequencies))), axis=1), rtol=1e-15)


# Algorithm 1 ---------------------------------------------------------------------------------------

def test_it_trains():
    """30 steps of Algorithm 1 with Adam on 32 random 8x8 images (dropout on, drawn from the
    step's generator) lower the loss; the initial loss is E[eps^2] = 1, eps_hat being 0."""
    data_rng = np.random.default_rng(7)
    model = unet(channels=1, base=8, multipliers=(1, 2), nb_blocks=1, attention=(4,), groups=4, image_size=8,
                 nb_classes=3)
    x0 = randn(data_rng, 32, 1, 8, 8)
    labels = backend.asarray(data_rng.integers(0, 3, 32))
    optimizer = Adam(model.flat_parameters(), lr=2e-3)
    schedule = Schedule()
    losses = [float(train_step(model, optimizer, x0, schedule, backend.default_rng(0, step), labels=labels))
              for step in range(30)]
    assert 0.7 < np.mean(losses[:3]) < 1.3
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
