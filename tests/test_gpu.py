"""The cupy backend against the numpy reference, on the same inputs and noise (drawn on the
host and uploaded). Every test here needs cupy and a CUDA device, and skips without them."""

import numpy as np
import pytest

from numpy_ddpm import backend
from numpy_ddpm.diffusion import ddim_generate, dpm_solver_generate, generate, loss_and_backward
from numpy_ddpm.layers import Conv2d, Linear, ReLU, TimeAppender
from numpy_ddpm.models import convnet, mlp
from numpy_ddpm.optim import EMA, Adam
from numpy_ddpm.schedule import Schedule

from conftest import CUPY_SKIP

pytestmark = pytest.mark.skipif(CUPY_SKIP is not None, reason=f"GPU tests: {CUPY_SKIP}")

RTOL, ATOL = 1e-4, 1e-5      # float32, different summation orders


@pytest.fixture
def on(request):
    """on("cupy") / on("numpy") switches the backend; numpy is restored at the end."""
    yield backend.use
    backend.use("numpy")
    backend.use_fused = True


class UploadedRandom:
    """Noise drawn on the host by numpy and uploaded: the same numbers on both backends."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def integers(self, low, high, size):
        return backend.asarray(self.rng.integers(low, high, size))

    def standard_normal(self, size, dtype=None):
        return backend.asarray(self.rng.standard_normal(size).astype(dtype or np.float64))


def run(name, on, f):
    """f() under backend `name`, its arrays brought back to the host."""
    on(name)
    out = f()
    return [backend.to_numpy(a) for a in out]


LAYERS = [
    (lambda rng: Linear(5, 7, rng), (4, 5), ()),
    (lambda rng: ReLU(), (4, 6), ()),
    (lambda rng: TimeAppender(), (3, 2, 4, 4), (0.3,)),
    (lambda rng: Conv2d(3, 8, 5, 2, rng), (2, 3, 9, 7), ()),
    (lambda rng: Conv2d(2, 4, 3, 1, rng), (1, 2, 28, 28), ()),
]


@pytest.mark.parametrize("make,shape,args", LAYERS)
def test_layers_agree(on, make, shape, args):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def f():
        layer = make(np.random.default_rng(1))
        y = layer.forward(backend.asarray(x), *args)
        dy = backend.asarray(np.random.default_rng(2).standard_normal(y.shape).astype(np.float32))
        dx = layer.backward(dy)
        return [y, dx] + [g for _, _, g in layer.parameters()]

    for a, b in zip(run("numpy", on, f), run("cupy", on, f)):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("make,shape", [(lambda: mlp(2), (25, 2)), (lambda: convnet(1, width=16), (8, 1, 8, 8))])
def test_training_step_agrees(on, fused, make, shape):
    rng = np.random.default_rng(3)
    x0, t, eps = rng.standard_normal(shape).astype(np.float32), rng.integers(0, 1000, shape[0]), \
        rng.standard_normal(shape).astype(np.float32)

    def f():
        backend.use_fused = fused
        model, s = make(), Schedule()
        opt, ema = Adam(model.flat_parameters()), EMA(model.flat_parameters(), 0.9)
        losses = []
        for _ in range(3):
            losses.append(loss_and_backward(model, backend.asarray(x0), backend.asarray(t), backend.asarray(eps), s))
            opt.step()
            ema.update()
        return [model.flat_params, ema.averages[0], opt.v[0], backend.xp.stack(losses)]

    for a, b in zip(run("numpy", on, f), run("cupy", on, f)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_fused_kernels_match_their_references(on):
    from cupy_backend import kernels
    on("cupy")
    xp = backend.xp
    rng = np.random.default_rng(4)
    s = Schedule()

    def arrays(*shape, n=1):
        return [xp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(n)]

    p, g, m, v = arrays(1000, n=4)
    v = abs(v)
    copies = [a.copy() for a in (p, m, v)]
    kernels.adam_update(p, g, m, v, 7, 1e-3, 0.9, 0.999, 1e-8)
    kernels.REFERENCES["adam_update"][1](*copies[:1], g, *copies[1:], 7, 1e-3, 0.9, 0.999, 1e-8)
    for a, b in zip((p, m, v), copies):
        np.testing.assert_allclose(a.get(), b.get(), rtol=1e-6, atol=1e-7)

    average, param = arrays(500, n=2)
    reference = average.copy()
    kernels.ema_update(average, param, 0.999)
    kernels.REFERENCES["ema_update"][1](reference, param, 0.999)
    np.testing.assert_allclose(average.get(), reference.get(), rtol=1e-6)

    x0, eps = arrays(6, 1, 5, 5, n=2)
    t = xp.asarray(rng.integers(0, 1000, 6))
    np.testing.assert_allclose(kernels.q_sample(x0, t, eps, s).get(),
                               kernels.REFERENCES["q_sample"][1](x0, t, eps, s).get(), rtol=1e-6, atol=1e-7)

    xt, eps_hat, z = arrays(64, 2, n=3)
    for step, noise in ((500, z), (0, None)):
        np.testing.assert_allclose(kernels.sampling_step(xt, eps_hat, noise, step, s).get(),
                                   kernels.REFERENCES["sampling_step"][1](xt, eps_hat, noise, step, s).get(),
                                   rtol=1e-5, atol=1e-6)

    x, = arrays(4, 8, 5, 5, n=1)
    x[0, 0, 0, :4] = xp.asarray([-1000, -90, 90, 1000])
    np.testing.assert_allclose(kernels.silu_forward(x).get(), kernels.REFERENCES["silu_forward"][1](x).get(),
                               rtol=1e-6, atol=1e-7)
    for a, b in zip(kernels.silu_and_slope(x), kernels.REFERENCES["silu_and_slope"][1](x)):
        np.testing.assert_allclose(a.get(), b.get(), rtol=1e-6, atol=1e-7)

    centred, = arrays(3, 4, 2, 25)                                 # GroupNorm's (N, G, C/G, H*W) view
    inv_sigma = xp.abs(arrays(3, 4, 1, 1)[0]) + 0.5
    gamma, beta = arrays(4, 2, 1, n=2)
    reference = kernels.REFERENCES["groupnorm_scale_shift"][1](centred.copy(), inv_sigma, gamma, beta)
    for a, b in zip(kernels.groupnorm_scale_shift(centred, inv_sigma, gamma, beta), reference):
        np.testing.assert_allclose(a.get(), b.get(), rtol=1e-6, atol=1e-6)
    written = kernels.groupnorm_scale_shift_in_place(centred.copy(), inv_sigma, gamma, beta)
    np.testing.assert_allclose(written.get(), reference[1].get(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_generate_agrees(on, fused):
    def f():
        backend.use_fused = fused
        return [generate(mlp(2, seed=5), (100, 2), Schedule(T=100), UploadedRandom(6))]

    (a,), (b,) = run("numpy", on, f), run("cupy", on, f)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)


def test_ddim_kernel_matches_its_reference(on):
    from cupy_backend import kernels
    on("cupy")
    xp, s = backend.xp, Schedule()
    rng = np.random.default_rng(7)
    xt, eps_hat, z = (xp.asarray(rng.standard_normal((64, 1, 8, 8)).astype(np.float32)) for _ in range(3))
    for t, t_prev, eta in ((999, 979, 0.0), (500, 250, 1.0), (20, -1, 1.0)):
        for noise in (z, None):
            np.testing.assert_allclose(kernels.ddim_step(xt, eps_hat, noise, t, t_prev, s, eta).get(),
                                       kernels.REFERENCES["ddim_step"][1](xt, eps_hat, noise, t, t_prev, s, eta).get(),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_guided_ddim_agrees(on, fused):
    labels = np.arange(100) % 4

    def f():
        backend.use_fused = fused
        return [ddim_generate(mlp(2, seed=5, nb_classes=4), (100, 2), Schedule(), UploadedRandom(6), nb_steps=20,
                              eta=1.0, labels=backend.asarray(labels), guidance=3.0)]

    (a,), (b,) = run("numpy", on, f), run("cupy", on, f)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)


def test_dpm_solver_kernel_matches_its_reference(on):
    from cupy_backend import kernels
    on("cupy")
    xp, s = backend.xp, Schedule()
    rng = np.random.default_rng(9)
    xs, eps_hat, x0_hat_s1, x0_hat_s2 = (xp.asarray(rng.standard_normal((64, 1, 8, 8)).astype(np.float32))
                                         for _ in range(4))
    for step, t, earlier in ((999, 949, []), (949, 899, [999]), (899, 849, [949, 999]), (49, -1, [])):
        before = list(zip(earlier, (x0_hat_s1, x0_hat_s2)))
        fused = kernels.dpm_solver_update(xs, eps_hat, step, t, before, s)
        reference = kernels.REFERENCES["dpm_solver_update"][1](xs, eps_hat, step, t, before, s)
        for a, b in zip(fused, reference):
            np.testing.assert_allclose(a.get(), b.get(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_guided_dpm_solver_agrees(on, fused):
    labels = np.arange(100) % 4

    def f():
        backend.use_fused = fused
        return [dpm_solver_generate(mlp(2, seed=5, nb_classes=4), (100, 2), Schedule(), UploadedRandom(6),
                                    nb_steps=20, order=3, labels=backend.asarray(labels), guidance=3.0)]

    (a,), (b,) = run("numpy", on, f), run("cupy", on, f)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)


def test_conditional_training_step_agrees(on):
    rng = np.random.default_rng(8)
    x0, t, eps = (rng.standard_normal((8, 1, 8, 8)).astype(np.float32), rng.integers(0, 1000, 8),
                  rng.standard_normal((8, 1, 8, 8)).astype(np.float32))
    labels = rng.integers(0, 11, 8)

    def f():
        model = convnet(1, width=8, nb_classes=10)
        loss = loss_and_backward(model, backend.asarray(x0), backend.asarray(t), backend.asarray(eps), Schedule(),
                                 backend.asarray(labels))
        return [backend.xp.asarray(loss), model.flat_grads]

    for a, b in zip(run("numpy", on, f), run("cupy", on, f)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_device_random_draws_on_the_device(on):
    on("cupy")
    rng = backend.default_rng(0, 1)
    t = rng.integers(0, 1000, 25)
    eps = rng.standard_normal((25, 2), dtype=np.float32)
    assert type(t).__module__.startswith("cupy") and eps.dtype == np.float32
    assert 0 <= int(t.min()) and int(t.max()) < 1000


def test_bad_device_number_is_one_sentence(on):
    with pytest.raises(backend.BackendError, match="there is no CUDA device 99"):
        on("cupy", 99)
