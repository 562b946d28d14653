"""The module tree: parameters found at any depth (lists of blocks included) into the flat
buffers, train() recursive, conditioning handed out by name, and the evaluation-mode context."""

import numpy as np
import pytest

from numpy_ddpm import backend
from numpy_ddpm.models import LabelAppender, TimeAppender
from numpy_ddpm.nn import Linear, Module, ReLU, Sequential, evaluating
from numpy_ddpm.nn.optim import Adam

from conftest import to_np


class Block(Module):
    """A residual block with a list of layers inside and a nested Sequential: the shapes a
    U-Net's blocks take."""

    def __init__(self, d, rng):
        self.body = [Linear(d, d, rng), ReLU()]
        self.tail = Sequential(Linear(d, d, rng))

    def forward(self, x):
        h = x
        for layer in self.body:
            h = layer.forward(h)
        return x + self.tail.forward(h)

    def backward(self, dy):
        dh = self.tail.backward(dy)
        for layer in reversed(self.body):
            dh = layer.backward(dh)
        return dy + dh                      # the shortcut's gradient and the body's


class Net(Module):
    def __init__(self, rng):
        self.blocks = [Block(3, rng), Block(3, rng)]
        self.head = Linear(3, 2, rng)
        self.flatten()

    def forward(self, x):
        for block in self.blocks:
            x = block.forward(x)
        return self.head.forward(x)

    def backward(self, dy):
        dy = self.head.backward(dy)
        for block in reversed(self.blocks):
            dy = block.backward(dy)
        return dy


def test_parameters_at_any_depth_live_in_the_flat_buffers():
    net = Net(np.random.default_rng(0))
    names = [name for name, _, _ in net.parameters()]
    assert names == ["blocks.0.body.0.weight", "blocks.0.body.0.bias", "blocks.0.tail.0.weight",
                     "blocks.0.tail.0.bias", "blocks.1.body.0.weight", "blocks.1.body.0.bias",
                     "blocks.1.tail.0.weight", "blocks.1.tail.0.bias", "head.weight", "head.bias"]
    assert net.flat_params.size == sum(p.size for _, p, _ in net.parameters()) == 4 * 12 + 8
    for _, param, grad in net.parameters():
        assert np.shares_memory(param, net.flat_params) and np.shares_memory(grad, net.flat_grads)
    # Adam on the flat buffers updates the deepest layer
    x = backend.asarray(np.random.default_rng(1).standard_normal((5, 3)), dtype=backend.dtype)
    deep = net.blocks[1].tail.layers[0]
    before = to_np(deep.w).copy()
    net.zero_grad()
    net.backward(net.forward(x))
    assert np.abs(to_np(deep.dw)).max() > 0
    Adam(net.flat_parameters(), lr=1e-2).step()
    assert not np.array_equal(to_np(deep.w), before)
    net.zero_grad()
    assert not to_np(net.flat_grads).any() and not to_np(deep.dw).any()


def test_an_inner_sequential_gives_its_buffers_up_to_the_root():
    net = Net(np.random.default_rng(0))
    with pytest.raises(AttributeError, match="flatten"):
        _ = net.blocks[0].tail.flat_params


def test_train_reaches_every_module():
    net = Net(np.random.default_rng(0))
    net.train(False)
    assert not any(module.training for module in net.modules())
    net.train(True)
    assert all(module.training for module in net.modules())


def test_each_layer_receives_the_conditioning_it_takes():
    model = Sequential(TimeAppender(), LabelAppender(2), Linear(2 + 1 + 3, 4, np.random.default_rng(0)))
    assert model.takes == ("t", "labels")
    x = backend.asarray(np.zeros((3, 2)), dtype=backend.dtype)
    y = model.forward(x, 0.25, np.array([0, 1, 2]))
    assert y.shape == (3, 4)
    with pytest.raises(TypeError, match="LabelAppender.forward needs labels"):
        model.forward(x, 0.25)


def test_evaluating_restores_the_mode_even_on_error():
    net = Net(np.random.default_rng(0))
    with pytest.raises(RuntimeError):
        with evaluating(net):
            assert not net.head.training
            raise RuntimeError("a sampler failed")
    assert all(module.training for module in net.modules())
    net.train(False)
    with evaluating(net):
        pass
    assert not net.training


def test_elementwise_layers_keep_the_layout_they_receive():
    """The layout contract of nn/module.py: Winograd hands on (N, C, H, W) views of (C, H, W, N)
    storage, and ReLU and SiLU pass that memory order on, so the next convolution reads it
    without a copy."""
    from numpy_ddpm.nn import SiLU
    stored = backend.asarray(np.random.default_rng(0).standard_normal((3, 4, 5, 2)), dtype=backend.dtype)
    x = stored.transpose(3, 0, 1, 2)                                    # (N, C, H, W) view of (C, H, W, N)
    for layer in (ReLU(), SiLU()):
        y = layer.forward(x)
        assert y.shape == x.shape
        assert np.argsort(y.strides).tolist() == np.argsort(x.strides).tolist(), type(layer).__name__


def test_upsampling_keeps_the_layout_it_receives_in_both_passes():
    """Nearest upsampling and its backward (the 2x2 window sums) keep batch-last storage
    batch-last, and C order in C order, with the same values either way."""
    from numpy_ddpm.nn import Upsample
    rng = np.random.default_rng(1)
    x_c = backend.asarray(rng.standard_normal((2, 3, 4, 5)), dtype=backend.dtype)
    dy_c = backend.asarray(rng.standard_normal((2, 3, 8, 10)), dtype=backend.dtype)

    def as_batch_last(a):               # (N, C, H, W) view of (C, H, W, N) storage
        return backend.xp.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    layer = Upsample()
    for x, dy in ((x_c, dy_c), (as_batch_last(x_c), as_batch_last(dy_c))):
        y, dx = layer.forward(x), layer.backward(dy)
        for a, b in ((y, x), (dx, dy)):
            assert np.argsort(a.strides).tolist() == np.argsort(b.strides).tolist()
        np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(layer.forward(x_c)))
        np.testing.assert_allclose(backend.to_numpy(dx), backend.to_numpy(layer.backward(dy_c)), rtol=1e-6)
