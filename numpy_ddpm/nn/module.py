"""The module tree: what every layer, block and model shares.

A Module computes `forward(x, ...)`, caching what its `backward(dy)` needs; `backward` takes
the gradient of the loss with respect to the output and returns the gradient with respect to
x. Gradients of parameters *accumulate* (`dw += ...`), as in micrograd and PyTorch, so call
`zero_grad()` before each backward pass.

A module's parameters are the attributes named in `param_names`, each gradient the same name
with a "d" in front. Its sub-modules are found in its attributes, at any depth: an attribute
that holds a Module, or a list or tuple of them. `parameters()`, `train()` and `modules()`
walk that tree in the order the attributes were set.

The root of a model calls `flatten()`: every parameter of the tree then lives in one flat
buffer and every gradient in another (each array a view into them), so Adam, the EMA and
`zero_grad` are a few whole-model passes instead of one small pass per array.

Conditioning: a module's `takes` names what its forward needs besides x, among the
conditioning a model is called with ("t", "labels", or a block's "emb"); a Sequential hands
each of its layers exactly that, by name.

Layout: images pass between layers as arrays of shape (N, C, H, W), but not always stored in
that order. Winograd hands its output on as a view of channel-first, batch-innermost storage
(C, H, W, N), which its next layer reads without a copy; elementwise layers (ReLU, SiLU) keep
the memory order they receive, as numpy's ufuncs do. So no layer may assume a C-contiguous
input: reshape, never `.view`, and let `xp` copy where it must.
"""

import contextlib

from .. import backend
from .im2col import Buffers


class Module:
    """Base class: no parameters, no conditioning, training mode on."""

    param_names = {}        # attribute -> public name, e.g. {"w": "weight"}; gradient is "d" + attribute
    takes = ()              # the conditioning forward takes after x, by keyword: ("t",), ("labels",), ...
    training = True         # modules may keep more for backward while training
    _flat = None            # (flat parameters, flat gradients) at the root of a flattened tree

    def children(self):
        """(name, module) for each sub-module held in an attribute, directly or in a list or tuple."""
        for attr, value in vars(self).items():
            if isinstance(value, Module):
                yield attr, value
            elif isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{attr}.{index}", item

    def modules(self):
        """This module and every module below it, depth first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def parameters(self):
        """Yield (name, param, grad) for each parameter of the tree, named as in a PyTorch
        state_dict ("layers.0.weight"): the live arrays, not copies."""
        for attr, public_name in self.param_names.items():
            yield public_name, getattr(self, attr), getattr(self, "d" + attr)
        for prefix, child in self.children():
            for name, param, grad in child.parameters():
                yield f"{prefix}.{name}", param, grad

    def zero_grad(self):
        if self._flat is not None:
            self._flat[1][...] = 0
            return
        for _, _, grad in self.parameters():
            grad[...] = 0

    def train(self, mode=True):
        """Training mode keeps what backward needs; `train(False)` (sampling) keeps less."""
        for module in self.modules():
            module.training = mode
        return self

    # The flat buffers ----------------------------------------------------------------------

    def flatten(self):
        """Move every parameter and gradient of the tree into two flat buffers (each array
        becomes a view), and give the modules that keep work arrays one shared set of them
        (those with a `work_buffers` attribute: the convolutions, which need them one layer at
        a time). Returns self."""
        xp = backend.xp
        owned = [(module, attr) for module in self.modules() for attr in module.param_names]
        size = sum(getattr(module, attr).size for module, attr in owned)
        dtype = getattr(*owned[0]).dtype if owned else backend.dtype
        flat_params, flat_grads = xp.empty(size, dtype=dtype), xp.zeros(size, dtype=dtype)
        offset = 0
        for module, attr in owned:
            param = getattr(module, attr)
            view = flat_params[offset:offset + param.size].reshape(param.shape)
            view[...] = param
            setattr(module, attr, view)
            setattr(module, "d" + attr, flat_grads[offset:offset + param.size].reshape(param.shape))
            offset += param.size
        shared = Buffers()
        for module in self.modules():
            module._flat = None                 # an inner container's own buffers are stale now
            if "work_buffers" in vars(module):
                module.work_buffers = shared
        self._flat = flat_params, flat_grads
        return self

    def _buffers(self):
        if self._flat is None:
            raise AttributeError(f"this {type(self).__name__} has no flat buffers: call flatten() "
                                 f"on the root of its model")
        return self._flat

    @property
    def flat_params(self):
        """All parameters of the tree, one 1-D array (flatten())."""
        return self._buffers()[0]

    @property
    def flat_grads(self):
        """All gradients of the tree, one 1-D array, in the order of flat_params."""
        return self._buffers()[1]

    def flat_parameters(self):
        """[(all parameters, all gradients)]: the two flat buffers, for Adam and the EMA."""
        return [self._buffers()]


class Sequential(Module):
    """Modules applied in order; each receives, by keyword, the conditioning it `takes`.

        model = Sequential(TimeAppender(), Linear(3, 256), ReLU(), ...)
        eps_hat = model.forward(x, t)           # or forward(x, t, labels), forward(x, emb=...)

    Backward runs the layers in reverse. The Sequential flattens its tree when built (a
    Sequential inside a larger model is flattened again by that model's root).
    """

    def __init__(self, *layers):
        self.layers = list(layers)
        self.takes = tuple(dict.fromkeys(name for layer in self.layers for name in layer.takes))
        self.flatten()

    def children(self):
        """The layers, named by their index ("0", "1", ...), as in PyTorch's nn.Sequential."""
        for index, layer in enumerate(self.layers):
            yield str(index), layer

    def forward(self, x, t=None, labels=None, **conditioning):
        conditioning.update(t=t, labels=labels)
        for layer in self.layers:
            if not layer.takes:                         # most layers: x alone, on the training step's hot path
                x = layer.forward(x)
                continue
            needs = {name: conditioning[name] for name in layer.takes}
            missing = [name for name, value in needs.items() if value is None]
            if missing:
                raise TypeError(f"{type(layer).__name__}.forward needs {', '.join(missing)}")
            x = layer.forward(x, **needs)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy


@contextlib.contextmanager
def evaluating(model):
    """Evaluation mode inside the block (`model.train(False)`: keep nothing for a backward
    pass, dropout off), then the mode the model had, even on error. A model without `train`
    (an exact denoiser, say) is left alone."""
    if not hasattr(model, "train"):
        yield model
        return
    training = getattr(model, "training", True)
    model.train(False)
    try:
        yield model
    finally:
        model.train(training)
