"""DPM-Solver++ (Lu et al. 2022): the step indices, the order of each step, order 1 against DDIM
at eta = 0, the accuracy of 2M and 3M on Gaussian data (whose eps is known exactly), every
intermediate x against diffusers' DPMSolverMultistepScheduler, guidance, the arguments, the
training flag, the device path, and the demos' --sampler dpm++ flags."""

import math
import os

import numpy as np
import pytest
from test_guidance import run_demo

from numpy_ddpm import backend
from numpy_ddpm.app import cli
from numpy_ddpm.diffusion import ddim_generate, ddim_step, ddim_timesteps, dpm_solver
from numpy_ddpm.diffusion.dpm_solver import dpm_solver_update, dpm_timesteps, solver_orders
from numpy_ddpm.models import mlp
from numpy_ddpm.schedule import Schedule

from conftest import to_np

T = 1000
SPACINGS = ["leading", "trailing", "linspace"]


def test_re_exported_from_diffusion():
    from numpy_ddpm.diffusion import dpm_solver_generate
    assert dpm_solver_generate is dpm_solver.dpm_solver_generate


def test_dpm_timesteps():
    np.testing.assert_array_equal(to_np(dpm_timesteps(T, 10, "leading")), np.arange(900, 0, -90))
    np.testing.assert_array_equal(to_np(dpm_timesteps(T, 10, "trailing")), np.arange(999, 0, -100))
    np.testing.assert_array_equal(to_np(dpm_timesteps(T, 10, "linspace")),
                                  [999, 899, 799, 699, 599, 500, 400, 300, 200, 100])
    for S in (1, 2, 3, 7, 10, 20, 50, 61, 103, 500, 999):
        # diffusers' DPMSolverMultistepScheduler.set_timesteps, written with numpy
        # (at S = 61, 103, ... its "trailing" has an S + 1-th index, -1, which we cut)
        expected = {"leading": (np.arange(S + 1) * (T // (S + 1))).round()[::-1][:-1],
                    "linspace": np.linspace(0, T - 1, S + 1).round()[::-1][:-1],
                    "trailing": (np.arange(T, 0, -T / S).round() - 1)[:S]}
        for spacing in SPACINGS:
            steps = to_np(dpm_timesteps(T, S, spacing))
            assert len(steps) == S and steps.dtype.kind == "i" and np.all(np.diff(steps) < 0), (S, spacing)
            assert 0 <= steps[-1] and steps[0] <= T - 1
            np.testing.assert_array_equal(steps, expected[spacing].astype(int))
        np.testing.assert_array_equal(to_np(dpm_timesteps(T, S, "trailing")),
                                      to_np(ddim_timesteps(T, S, "trailing")))
    np.testing.assert_array_equal(to_np(dpm_timesteps(T, T, "trailing")), np.arange(T - 1, -1, -1))
    # diffusers' DDIM "leading" is another rule: arange(S) * (T // S), reversed, down to 0
    assert to_np(ddim_timesteps(T, 10, "leading"))[-1] == 0
    assert to_np(dpm_timesteps(T, 10, "leading"))[-1] == 90


def test_solver_orders():
    assert solver_orders(5, 1) == [1, 1, 1, 1, 1]
    assert solver_orders(5, 2) == solver_orders(5, 2, lower_order_final=False) == [1, 2, 2, 2, 1]
    assert solver_orders(6, 3) == [1, 2, 3, 3, 2, 1]
    assert solver_orders(6, 3, lower_order_final=False) == [1, 2, 3, 3, 3, 1]
    assert solver_orders(15, 3)[-3:] == [3, 3, 1]       # 15 steps and more: only the last is lower
    assert solver_orders(1, 3) == [1] and solver_orders(2, 3) == [1, 1] and solver_orders(3, 3) == [1, 2, 1]


class Gaussian:
    """The exact eps of data drawn from N(mu, diag(std^2)): x_t = a x0 + b eps with a = sqrt(alpha_bar_t),
    b = sqrt(1 - alpha_bar_t), so E[eps | x_t] = b (x_t - a mu) / (a^2 std^2 + b^2), in float64.
    The diffusion ODE keeps the z-score: x_t = a mu + sqrt(a^2 std^2 + b^2) z all along a path."""

    def __init__(self, schedule, mu, std):
        self.s, self.mu, self.std = schedule, np.array(mu), np.array(std)

    def eps(self, x, t):
        a, b = math.sqrt(self.s.host["alpha_bar"][t]), math.sqrt(1 - self.s.host["alpha_bar"][t])
        return b * (np.asarray(x, np.float64) - a * self.mu) / (a * a * self.std ** 2 + b * b)

    def forward(self, x, network_time):
        t = int(round((network_time + 0.5) * (self.s.T - 1)))
        return backend.asarray(self.eps(to_np(x), t), dtype=backend.dtype)

    def exact_x0(self, x_T):
        """Where the exact ODE carries x_T (at index T - 1) to: mu + std z."""
        a, b = math.sqrt(self.s.host["alpha_bar"][-1]), math.sqrt(1 - self.s.host["alpha_bar"][-1])
        return self.mu + self.std * (x_T - a * self.mu) / np.sqrt(a * a * self.std ** 2 + b * b)


class SameStart:
    """A generator whose only draw is x_T."""

    def __init__(self, x_T):
        self.x_T = x_T

    def standard_normal(self, size, dtype=None):
        assert tuple(size) == self.x_T.shape
        return backend.asarray(self.x_T, dtype=dtype)


def sample(model, x_T, schedule=None, **kwargs):
    """(samples, [(t, x_t)] from the callback) of dpm_solver_generate, as host arrays."""
    path = []
    x = dpm_solver.dpm_solver_generate(model, x_T.shape, schedule or model.s, SameStart(x_T),
                                       callback=lambda t, x: path.append((t, to_np(x).copy())), **kwargs)
    return to_np(x), path


def relative_differences(path_a, path_b):
    """max |a - b| / max |b| at each recorded step (same t in both)."""
    assert [t for t, _ in path_a] == [t for t, _ in path_b]
    return [np.abs(a - b).max() / np.abs(b).max() for (_, a), (_, b) in zip(path_a, path_b)]


# Order 1 is DDIM at eta = 0 ------------------------------------------------------------------

@pytest.mark.parametrize("s,t", [(999, 949), (500, 250), (40, 0), (19, -1), (1, 0)])
def test_first_order_step_is_the_ddim_step(s, t):
    with backend.precision("float64"):
        schedule = Schedule()
        rng = np.random.default_rng(s)
        xs, eps_hat = rng.standard_normal((2, 5, 3))
        x_t, x0_hat = dpm_solver_update(xs, eps_hat, s, t, [], schedule)
        np.testing.assert_allclose(to_np(x_t), to_np(ddim_step(xs, eps_hat, None, s, t, schedule, 0.0)),
                                   rtol=1e-12, atol=1e-12)
        alpha_bar = schedule.host["alpha_bar"][s]
        np.testing.assert_allclose(to_np(x0_hat),
                                   (xs - math.sqrt(1 - alpha_bar) * eps_hat) / math.sqrt(alpha_bar))


@pytest.mark.parametrize("model", ["gaussian", "mlp"])
@pytest.mark.parametrize("nb_steps", [1, 10, 50])
def test_first_order_is_ddim_at_eta_zero(model, nb_steps):
    """The same x_T, the same steps ("trailing": the two solvers' rules agree): every x_t alike
    to float32 round-off (1e-5 of the scale of x). (On a mixture the ODE pulls apart the points
    between its modes and magnifies round-off some 30 times over the last steps: not used here.)"""
    s = Schedule()
    make = {"gaussian": lambda: Gaussian(s, [0.5], [0.7]), "mlp": lambda: mlp(1, hidden=32, seed=3)}[model]
    x_T = np.random.default_rng(1).standard_normal((300, 1)).astype(np.float32)
    _, ours = sample(make(), x_T, s, nb_steps=nb_steps, order=1)
    ddim = []
    ddim_generate(make(), x_T.shape, s, SameStart(x_T), nb_steps=nb_steps, eta=0.0,
                  callback=lambda t, x: ddim.append((t, to_np(x).copy())))
    assert max(relative_differences(ours, ddim)) < 1e-5


# Accuracy on Gaussian data --------------------------------------------------------------------

@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_second_and_third_order_reach_the_gaussian_far_better_than_first_order(spacing):
    """Data N(mu, std^2) in two coordinates, with its exact eps: 20 steps from 10,000 draws of x_T,
    against where the exact ODE carries the same draws. Order 1 (DDIM) leaves the variance 15-19%
    too small; 2M and 3M come within 4% (measured 1-3%), and their means 5 times closer or more.
    (std is near 1, as for standardised data: for narrow data the final step to x0_hat from
    t = 49 shrinks the spread alike at every order.)"""
    s = Schedule()
    gaussian = Gaussian(s, [-1.0, 2.0], [0.8, 1.5])
    x_T = np.random.default_rng(2).standard_normal((10_000, 2)).astype(np.float32)
    exact = gaussian.exact_x0(x_T.astype(np.float64))
    errors = {}
    for order in (1, 2, 3):
        x, _ = sample(gaussian, x_T, nb_steps=20, order=order, spacing=spacing)
        errors[order] = (np.abs(x.mean(0) - exact.mean(0)).max(), np.abs(x.var(0) / exact.var(0) - 1).max())
    assert errors[1][1] > 0.1, errors
    for order in (2, 3):
        assert errors[order][1] < 0.04 and errors[order][1] < errors[1][1] / 4, errors
        assert errors[order][0] < errors[1][0] / 5, errors


# Against diffusers ----------------------------------------------------------------------------

# diffusers' set_timesteps calls np.array on a torch tensor, which numpy 2 warns about
diffusers_warning = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")


def diffusers_scheduler(order, spacing, lower_order_final):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        algorithm_type="dpmsolver++", solver_type="midpoint", solver_order=order, timestep_spacing=spacing,
        lower_order_final=lower_order_final, final_sigmas_type="zero")


def diffusers_path(scheduler, gaussian, x_T, nb_steps):
    """[(t, x_t)] of diffusers' scheduler driven by the same eps, from the same x_T."""
    torch = pytest.importorskip("torch")
    scheduler.set_timesteps(nb_steps)
    x = torch.from_numpy(x_T.copy())
    path, times = [(T, x_T)], scheduler.timesteps.tolist()
    for t, t_next in zip(times, times[1:] + [-1]):
        eps = torch.from_numpy(gaussian.eps(x.numpy(), t).astype(x_T.dtype))
        x = scheduler.step(eps, t, x).prev_sample
        path.append((t_next + 1, x.numpy().copy()))
    return path


def test_our_schedule_is_diffusers_linear_schedule():
    """diffusers' alphas_cumprod is a float32 torch.cumprod; ours is float64: they agree to float32
    rounding (measured 3.6e-7 at most, relative), which is not what the comparisons below see."""
    scheduler = diffusers_scheduler(2, "trailing", True)
    theirs = scheduler.alphas_cumprod.double().numpy()
    assert scheduler.alphas_cumprod.dtype.is_floating_point and scheduler.alphas_cumprod.element_size() == 4
    np.testing.assert_allclose(np.array(Schedule().host["alpha_bar"]), theirs, rtol=1e-6, atol=0)


GAUSSIAN = ([0.5, -1.0, 2.0], [0.3, 1.2, 0.6])


@diffusers_warning
@pytest.mark.parametrize("nb_steps", [5, 10, 20, 50])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_step_matches_diffusers(order, spacing, lower_order_final, nb_steps):
    """float32 on both sides, diffusers with its own alphas_cumprod and step indices: every x_t
    within 1e-5 of the scale of x (measured 8.7e-7 at most over these 72 cases: float32 rounding
    of each side's coefficients and sums, see the float64 test below)."""
    scheduler = diffusers_scheduler(order, spacing, lower_order_final)
    s = Schedule()
    gaussian = Gaussian(s, *GAUSSIAN)
    x_T = np.random.default_rng(nb_steps).standard_normal((200, 3)).astype(np.float32)
    _, ours = sample(gaussian, x_T, nb_steps=nb_steps, order=order, spacing=spacing,
                     lower_order_final=lower_order_final)
    theirs = diffusers_path(scheduler, gaussian, x_T, nb_steps)
    assert max(relative_differences(ours, theirs)) < 1e-5


@diffusers_warning
@pytest.mark.parametrize("nb_steps", [1, 2, 3, 20])
@pytest.mark.parametrize("order", [2, 3])
def test_every_step_matches_diffusers_in_float64(order, nb_steps):
    """Both sides in float64 from the same alpha_bar (diffusers' sigmas recomputed in float64 from
    ours): every x_t within 1e-6. What remains is diffusers' step() rounding the sample to
    float32 ("upcast"); one step alone (straight to x0_hat, which does not go through it) agrees
    to 1e-12. In float32, that single step from index 999 differs by 1.9e-5: x0_hat divides by
    alpha_999 = 0.0064 and so magnifies float32's rounding of the coefficients 156 times."""
    torch = pytest.importorskip("torch")
    scheduler = diffusers_scheduler(order, "trailing", True)
    with backend.precision("float64"):
        s = Schedule()
        gaussian = Gaussian(s, *GAUSSIAN)
        x_T = np.random.default_rng(nb_steps).standard_normal((200, 3))
        _, ours = sample(gaussian, x_T, nb_steps=nb_steps, order=order)
    scheduler.set_timesteps(nb_steps)
    alpha_bar = np.array(s.host["alpha_bar"])[scheduler.timesteps.numpy()]
    scheduler.set_timesteps = lambda nb_steps: None         # keep the float64 sigmas set here
    scheduler.sigmas = torch.from_numpy(np.append(np.sqrt((1 - alpha_bar) / alpha_bar), 0.0))
    theirs = diffusers_path(scheduler, gaussian, x_T, nb_steps)
    assert max(relative_differences(ours, theirs)) < (1e-12 if nb_steps == 1 else 1e-6)


# Guidance, arguments, the training flag, the device path ---------------------------------------

class ManualGuidance:
    """eps_theta(x, t, null) + s (eps_theta(x, t, y) - eps_theta(x, t, null)) from two forward passes."""

    def __init__(self, model, labels, scale):
        self.model, self.labels, self.scale = model, labels, scale

    def forward(self, x, t):
        null = np.full_like(self.labels, self.model.nb_classes)
        eps_label, eps_null = self.model.forward(x, t, self.labels), self.model.forward(x, t, null)
        return eps_null + self.scale * (eps_label - eps_null)


def test_guidance_is_the_manual_combination():
    s = Schedule()
    labels = np.arange(30) % 3
    model = mlp(2, hidden=16, seed=4, nb_classes=3)
    x_T = np.random.default_rng(3).standard_normal((30, 2)).astype(np.float32)
    guided, _ = sample(model, x_T, s, nb_steps=10, order=3, labels=labels, guidance=2.5)
    manual, _ = sample(ManualGuidance(model, labels, 2.5), x_T, s, nb_steps=10, order=3)
    conditional, _ = sample(model, x_T, s, nb_steps=10, order=3, labels=labels)
    np.testing.assert_allclose(guided, manual, rtol=1e-5, atol=1e-5)
    assert np.abs(guided - conditional).max() > 0.01


@pytest.mark.parametrize("kwargs,message", [
    (dict(order=0), "orders 1, 2 and 3, not 0"),
    (dict(order=4), "orders 1, 2 and 3, not 4"),
    (dict(nb_steps=0), "1 to T = 1000 steps, not 0"),
    (dict(nb_steps=1001), "1 to T = 1000 steps, not 1001"),
    (dict(spacing="cosine"), "unknown spacing 'cosine'"),
    (dict(nb_steps=1000, spacing="leading"), "fits at most 999 steps"),
    (dict(nb_steps=1000, spacing="linspace"), "fits at most 999 steps"),
])
def test_bad_arguments_are_one_sentence(kwargs, message):
    model = mlp(2, hidden=8)
    with pytest.raises(ValueError, match=message) as info:
        dpm_solver.dpm_solver_generate(model, (4, 2), Schedule(), backend.default_rng(0), **kwargs)
    assert "\n" not in str(info.value) and str(info.value).count(". ") == 0
    assert model.training


class Failing:
    """A model that fails at its third evaluation."""

    def __init__(self):
        self.training, self.calls = True, 0

    def train(self, mode):
        self.training = mode

    def forward(self, x, t):
        assert not self.training
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("out of memory")
        return x * 0.5


def test_the_training_flag_is_restored_even_when_the_model_raises():
    model = Failing()
    with pytest.raises(RuntimeError, match="out of memory"):
        dpm_solver.dpm_solver_generate(model, (4, 2), Schedule(), backend.default_rng(0), nb_steps=5)
    assert model.training
    model = mlp(2, hidden=8)
    model.train(False)
    dpm_solver.dpm_solver_generate(model, (4, 2), Schedule(), backend.default_rng(0), nb_steps=3)
    assert not model.training


def test_progress_wraps_the_steps_and_the_update_is_the_fused_one(monkeypatch):
    calls = []

    def counted(*args):
        calls.append(args[2:4])
        return dpm_solver_update(*args)
    monkeypatch.setitem(backend._fused_kernels, "dpm_solver_update", counted)
    seen = []

    def progress(steps):
        for step in steps:
            seen.append(step)
            yield step
    dpm_solver.dpm_solver_generate(mlp(2, hidden=8), (4, 2), Schedule(), backend.default_rng(0), nb_steps=4,
                                   order=3, progress=progress)
    assert calls == [(999, 749), (749, 499), (499, 249), (249, -1)]
    assert seen == [(999, 749), (749, 499), (499, 249), (249, -1)]      # the (s, t) pairs of the one loop


def test_dpm_solver_stays_on_the_device():
    """On the strict stand-in for cupy: no host numpy, and one read of the step indices; the
    module's source never reaches for backend.np."""
    import strict_backend
    assert "backend.np" not in open(dpm_solver.__file__).read()
    restore = strict_backend.activate(backend)
    try:
        model = mlp(2, hidden=8, nb_classes=3)
        strict_backend.StrictArray.syncs = 0
        labels = backend.asarray(np.array([0, 1, 2, 3, 0]))
        out = dpm_solver.dpm_solver_generate(model, (5, 2), Schedule(T=40), backend.default_rng(1),
                                             nb_steps=8, order=3, spacing="linspace", labels=labels,
                                             guidance=3.0)
        assert isinstance(out, strict_backend.StrictArray) and strict_backend.StrictArray.syncs == 1
    finally:
        restore()


# The demos' flags ----------------------------------------------------------------------------

def parse(*flags, recipes=None):
    return cli.parse(cli.common_parser("test", recipes=recipes), list(flags))


@pytest.mark.parametrize("flags,message", [
    (["--sampler", "dpm++", "--order", "4"], "--order must be 1, 2 or 3, not 4"),
    (["--sampler", "dpm++", "--order", "0"], "--order must be 1, 2 or 3, not 0"),
    (["--order", "2"], "--order is for --sampler dpm++"),
    (["--sampler", "ddim", "--order", "1"], "--order is for --sampler dpm++"),
    (["--sampler", "dpm++", "--eta", "0"], "--eta is for --sampler ddim"),
    (["--sampler", "dpm++", "--sampling-steps", "0"], "--sampling-steps must be between 1 and 1000, not 0"),
    (["--sampler", "dpm++", "--sampling-steps", "1001"], "--sampling-steps must be between 1 and 1000"),
    (["--sampler", "ddim", "--spacing", "linspace"], "--spacing linspace is for --sampler dpm++"),
    (["--sampler", "dpm++", "--spacing", "leading", "--sampling-steps", "1000"], "fits at most 999"),
])
def test_sampling_flag_errors(flags, message):
    with pytest.raises(cli.UserError, match=message) as info:
        cli.check_sampling(parse(*flags), T)
    assert "\n" not in str(info.value)


def test_a_recipes_eta_is_not_the_users():
    """A recipe's sampler and eta are its own: --sampler dpm++ over it leaves its eta unused."""
    recipes = {"fast": dict(sampler="ddim", sampling_steps=200, eta=0.7)}
    args = parse("--recipe", "fast", "--sampler", "dpm++", "--sampling-steps", "15", recipes=recipes)
    cli.check_sampling(args, T)
    assert (args.sampler, args.sampling_steps, args.order) == ("dpm++", 15, None)
    assert "eta" not in args.given and {"recipe", "sampler", "sampling_steps"} <= set(args.given)
    with pytest.raises(cli.UserError, match="--eta is for --sampler ddim"):
        args = parse("--recipe", "fast", "--sampler", "dpm++", "--eta", "0.7", recipes=recipes)
        cli.check_sampling(args, T)
    for flags in (["--sampler", "dpm++", "--order", "3", "--spacing", "linspace", "--sampling-steps", "999"],
                  ["--sampler", "ddim", "--eta", "1", "--spacing", "leading"], []):
        cli.check_sampling(parse(*flags), T)


TINY = ["--data", "gaussian_mixture", "--nb-samples", "300", "--nb-epochs", "1", "--nb-generated", "40",
        "--hidden", "16", "--ema-decay", "0.5", "--no-bound"]


def test_demo_errors_write_nothing(tmp_path):
    for flags, message in ((["--sampler", "dpm++", "--order", "5"], "--order must be 1, 2 or 3"),
                           (["--sampler", "dpm++", "--eta", "0.5"], "--eta is for --sampler ddim"),
                           (["--sampler", "dpm++", "--sampling-steps", "0"], "--sampling-steps must be")):
        out = tmp_path / "run"
        result = run_demo("toy2d.py", *TINY, *flags, "--out", str(out))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
        assert not out.exists()


def test_demo_samples_with_dpm_solver_and_resumes_with_another_order(tmp_path):
    """Trains a tiny model and samples with 2M; --resume samples again (no training) with order 1,
    which from the same x_T is DDIM at eta = 0 on the same steps; the toy demo's fast recipe
    (DDIM, eta 0.7) runs with --sampler dpm++ too, its eta left unused."""
    out = str(tmp_path / "run")
    result = run_demo("toy2d.py", *TINY, "--sampler", "dpm++", "--sampling-steps", "10", "--out", out)
    assert result.returncode == 0, result.stderr
    second_order = np.load(os.path.join(out, "samples.npy"))
    assert second_order.shape == (40, 1) and np.all(np.isfinite(second_order))
    checkpoint = os.path.join(out, "checkpoint.npz")
    before = open(checkpoint, "rb").read()
    samples = {}
    for name, flags in (("order 1", ["--sampler", "dpm++", "--order", "1"]),
                        ("ddim", ["--sampler", "ddim"])):
        result = run_demo("toy2d.py", *TINY, *flags, "--sampling-steps", "10", "--out", out,
                          "--resume", checkpoint)
        assert result.returncode == 0, result.stderr
        samples[name] = np.load(os.path.join(out, "samples.npy"))
    assert open(checkpoint, "rb").read() == before
    np.testing.assert_allclose(samples["order 1"], samples["ddim"], rtol=1e-4, atol=1e-4)
    assert np.abs(samples["order 1"] - second_order).max() > 1e-3
    result = run_demo("toy2d.py", *TINY, "--recipe", "fast", "--sampler", "dpm++", "--sampling-steps", "5",
                      "--order", "3", "--out", str(tmp_path / "fast"))
    assert result.returncode == 0, result.stderr
