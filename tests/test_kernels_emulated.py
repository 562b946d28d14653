"""cupy_backend/kernels.py on the CPU: its ElementwiseKernels run through a small emulator
that executes each kernel's C body as numpy statements (the bodies are plain assignments), so
the wrappers' argument order, scalar casts and formulas are checked against the numpy_ddpm
references here; tests/test_gpu.py checks the compiled kernels on a GPU."""

import importlib
import sys
import textwrap
import types

import numpy as np
import pytest

from numpy_ddpm import backend, diffusion, optim
from numpy_ddpm.diffusion import dpm_solver
from numpy_ddpm.nn import activations, norm
from numpy_ddpm.schedule import Schedule


class EmulatedElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name):
        self.inputs = [p.split()[-1] for p in in_params.split(",")]
        self.outputs = [p.split()[-1] for p in out_params.split(",")]
        self.body = textwrap.dedent(operation).replace(";", "")
        self.name = name

    def __call__(self, *args):
        inputs, outputs = args[:len(self.inputs)], list(args[len(self.inputs):])
        assert all(np.ndim(a) == 0 or isinstance(a, np.ndarray) for a in args)
        dtype = next(a.dtype for a in inputs if isinstance(a, np.ndarray))
        # every argument of type T shares one dtype, as in cupy
        assert all(a.dtype == dtype for a in args if isinstance(a, (np.ndarray, np.generic))), self.name
        if not outputs:
            shape = np.broadcast_shapes(*[np.shape(a) for a in inputs])
            outputs = [np.empty(shape, dtype) for _ in self.outputs]
        names = dict(zip(self.inputs, inputs), sqrt=np.sqrt, exp=np.exp)
        names.update({k: v.copy() for k, v in zip(self.outputs, outputs)})
        exec(self.body, {}, names)
        for name, out in zip(self.outputs, outputs):
            out[...] = names[name]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


@pytest.fixture
def kernels(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.ElementwiseKernel = EmulatedElementwiseKernel
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delitem(sys.modules, "cupy_backend.kernels", raising=False)
    yield importlib.import_module("cupy_backend.kernels")
    sys.modules.pop("cupy_backend.kernels", None)


def test_every_fused_kernel_has_its_reference(kernels):
    assert kernels.REFERENCES["adam_update"][1] is optim.adam_update
    assert kernels.REFERENCES["ema_update"][1] is optim.ema_update
    assert kernels.REFERENCES["q_sample"][1] is diffusion.q_sample
    assert kernels.REFERENCES["sampling_step"][1] is diffusion.sampling_step
    assert kernels.REFERENCES["ddim_step"][1] is diffusion.ddim_step
    assert kernels.REFERENCES["dpm_solver_update"][1] is dpm_solver.dpm_solver_update
    assert kernels.REFERENCES["silu_forward"][1] is activations.silu_forward
    assert kernels.REFERENCES["silu_and_slope"][1] is activations.silu_and_slope
    assert kernels.REFERENCES["groupnorm_scale_shift"][1] is norm.scale_shift
    assert kernels.REFERENCES["groupnorm_scale_shift_in_place"][1] is norm.scale_shift_in_place
    assert set(kernels.REGISTRY) == set(kernels.REFERENCES)


def arrays(rng, *shape, n=1):
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def test_adam_and_ema_kernels(kernels):
    rng = np.random.default_rng(0)
    p, g, m, v = arrays(rng, 500, n=4)
    v = abs(v)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    for t in (1, 5):
        kernels.adam_update(p, g, m, v, t, 1e-3, 0.9, 0.999, 1e-8)
        optim.adam_update(p2, g, m2, v2, t, 1e-3, 0.9, 0.999, 1e-8)
        for a, b in ((p, p2), (m, m2), (v, v2)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    average, average2 = p.copy(), p.copy()
    kernels.ema_update(average, g, 0.999)
    optim.ema_update(average2, g, 0.999)
    np.testing.assert_allclose(average, average2, rtol=1e-6)


def test_q_sample_and_sampling_step_kernels(kernels):
    rng = np.random.default_rng(1)
    s = Schedule()
    x0, eps = arrays(rng, 6, 1, 4, 4, n=2)
    t = rng.integers(0, 1000, 6)
    np.testing.assert_allclose(kernels.q_sample(x0, t, eps, s), diffusion.q_sample(x0, t, eps, s),
                               rtol=1e-6, atol=1e-7)
    xt, eps_hat, z = arrays(rng, 50, 2, n=3)
    for step, noise in ((700, z), (0, None)):
        np.testing.assert_allclose(kernels.sampling_step(xt, eps_hat, noise, step, s),
                                   diffusion.sampling_step(xt, eps_hat, noise, step, s), rtol=1e-5, atol=1e-6)


def test_generate_through_the_emulated_kernels(kernels, monkeypatch):
    """Algorithm 2 with the fused sampling step registered, as backend.use("cupy") does."""
    from numpy_ddpm.models import mlp
    monkeypatch.setattr(backend, "_fused_kernels", dict(kernels.REGISTRY))
    fused = diffusion.generate(mlp(2, seed=1), (40, 2), Schedule(T=50), backend.default_rng(2))
    backend._fused_kernels.clear()
    plain = diffusion.generate(mlp(2, seed=1), (40, 2), Schedule(T=50), backend.default_rng(2))
    np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-5)


def test_ddim_step_kernel(kernels):
    rng = np.random.default_rng(3)
    s = Schedule()
    xt, eps_hat, z = arrays(rng, 50, 1, 3, 3, n=3)
    for t, t_prev, eta in ((999, 979, 0.0), (999, 979, 1.0), (500, 250, 0.4), (20, -1, 1.0), (1, 0, 0.7)):
        for noise in (z, None):
            np.testing.assert_allclose(kernels.ddim_step(xt, eps_hat, noise, t, t_prev, s, eta),
                                       diffusion.ddim_step(xt, eps_hat, noise, t, t_prev, s, eta),
                                       rtol=1e-5, atol=1e-5)


def test_ddim_generate_through_the_emulated_kernels(kernels, monkeypatch):
    """DDIM with the fused step registered, as backend.use("cupy") does, with guidance."""
    from numpy_ddpm.models import mlp
    labels = np.arange(40) % 3

    def sample():
        return diffusion.ddim_generate(mlp(2, seed=1, nb_classes=3), (40, 2), Schedule(T=50), backend.default_rng(2),
                                       nb_steps=10, eta=0.5, labels=labels, guidance=2.0)
    monkeypatch.setattr(backend, "_fused_kernels", dict(kernels.REGISTRY))
    fused = sample()
    backend._fused_kernels.clear()
    np.testing.assert_allclose(fused, sample(), rtol=1e-4, atol=1e-5)


def test_dpm_solver_update_kernel(kernels):
    """Each order, the first step (x0_hat divides by alpha_999 = 0.0064) and the last (to x0_hat)."""
    rng = np.random.default_rng(5)
    s = Schedule()
    xs, eps_hat, x0_hat_s1, x0_hat_s2 = arrays(rng, 50, 1, 3, 3, n=4)
    for step, t, earlier in ((999, 949, []), (949, 899, [999]), (899, 849, [949, 999]),
                             (300, 200, [450, 700]), (99, 49, [149]), (49, -1, [])):
        before = list(zip(earlier, (x0_hat_s1, x0_hat_s2)))
        fused = kernels.dpm_solver_update(xs, eps_hat, step, t, before, s)
        reference = dpm_solver.dpm_solver_update(xs, eps_hat, step, t, before, s)
        for a, b in zip(fused, reference):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dpm_solver_generate_through_the_emulated_kernels(kernels, monkeypatch):
    """DPM-Solver++(3M) with the fused step registered, as backend.use("cupy") does, with guidance."""
    from numpy_ddpm.models import mlp
    labels = np.arange(40) % 3

    def sample():
        return dpm_solver.dpm_solver_generate(mlp(2, seed=1, nb_classes=3), (40, 2), Schedule(T=50),
                                              backend.default_rng(2), nb_steps=10, order=3, labels=labels,
                                              guidance=2.0)
    monkeypatch.setattr(backend, "_fused_kernels", dict(kernels.REGISTRY))
    fused = sample()
    backend._fused_kernels.clear()
    np.testing.assert_allclose(fused, sample(), rtol=1e-4, atol=1e-5)


def test_silu_kernels(kernels):
    """One pass each, as the references, down to the overflow of exp(-x) (x = -1000: 0)."""
    rng = np.random.default_rng(6)
    x, = arrays(rng, 4, 8, 5, 5, n=1)
    x.flat[:4] = [-1000, -90, 90, 1000]
    with np.errstate(over="ignore"):                  # the emulator's numpy exp; CUDA's never warns
        fused, reference = kernels.silu_forward(x), activations.silu_forward(x)
        fused_pair, reference_pair = kernels.silu_and_slope(x), activations.silu_and_slope(x)
    for a, b in zip((fused, *fused_pair), (reference, *reference_pair)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert np.all(np.isfinite(a))
    assert fused.flat[0] == 0 and fused.flat[3] == 1000 and fused_pair[0].flat[3] == 1000
    assert fused_pair[1].flat[0] == 0 and fused_pair[1].flat[3] == 1       # the slope far out: 0 and 1


def test_groupnorm_kernels(kernels):
    """GroupNorm's element-wise end, broadcast as GroupNorm calls it: (N, G, C/G, H*W) with
    inv_sigma per group and gamma, beta per channel; the in-place one writes over its input."""
    rng = np.random.default_rng(8)
    centred, = arrays(rng, 3, 4, 2, 25, n=1)
    inv_sigma = abs(arrays(rng, 3, 4, 1, 1)[0]) + 0.5
    gamma, beta = arrays(rng, 4, 2, 1, n=2)
    xhat, y = kernels.groupnorm_scale_shift(centred, inv_sigma, gamma, beta)
    reference = norm.scale_shift(centred.copy(), inv_sigma, gamma, beta)
    for a, b in zip((xhat, y), reference):
        assert a.shape == b.shape == centred.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    written = centred.copy()
    assert kernels.groupnorm_scale_shift_in_place(written, inv_sigma, gamma, beta) is written
    np.testing.assert_allclose(written, reference[1], rtol=1e-6, atol=1e-7)


def counted_kernels(kernels, names, calls):
    def counted(name):
        def kernel(*args):
            calls.append(name)
            return kernels.REGISTRY[name](*args)
        return kernel
    return {name: counted(name) for name in names}


FUSED_UNET = ("silu_forward", "silu_and_slope", "groupnorm_scale_shift", "groupnorm_scale_shift_in_place")


def test_unet_step_through_the_emulated_kernels(kernels, monkeypatch):
    """A U-Net's loss and gradients, and a forward pass while sampling, with the fused SiLU and
    GroupNorm registered, as backend.use("cupy") does."""
    from numpy_ddpm.diffusion import loss_and_backward
    from numpy_ddpm.models import unet

    def step():
        model = unet(base=8, groups=2, image_size=8, attention=(), dropout=0.0, seed=3)
        rng = np.random.default_rng(7)
        for _, param, _ in model.parameters():          # away from the zero-initialised layers' 0
            param += 0.1 * rng.standard_normal(param.shape).astype(np.float32)
        x0 = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
        loss = loss_and_backward(model, x0, np.array([5, 500, 900]), rng.standard_normal(x0.shape).astype(np.float32),
                                 Schedule())
        model.train(False)
        eps_hat = model.forward(x0, np.full(3, 0.2, dtype=np.float32))
        return float(loss), model.flat_grads.copy(), eps_hat
    plain = step()
    calls = []
    monkeypatch.setattr(backend, "_fused_kernels", counted_kernels(kernels, FUSED_UNET, calls))
    fused = step()
    assert set(calls) == set(FUSED_UNET)            # training: with the slope and xhat; sampling: neither
    assert fused[0] == pytest.approx(plain[0], rel=1e-5)
    np.testing.assert_allclose(fused[1], plain[1], rtol=1e-3, atol=1e-5)
    assert np.abs(plain[2]).max() > 0.1
    np.testing.assert_allclose(fused[2], plain[2], rtol=1e-4, atol=1e-6)
