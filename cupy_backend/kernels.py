"""Fused element-wise kernels: each does in one launch what its numpy_ddpm reference function
does in several, and must match it (tests/test_gpu.py checks that). Built once, at import,
and cached by cupy after their first compilation.
"""

import cupy

from numpy_ddpm.diffusion import ddim, dpm_solver, sampling, training
from numpy_ddpm.nn import activations, norm, optim

# Adam, as optim.adam_update:
#   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
#   param -= lr (m / correction1) / (sqrt(v / correction2) + eps),  correction_i = 1 - beta_i^t
# The complements 1 - beta come from the host in double precision: 1 - 0.999f in float32 is
# 1.3e-5 off.
_adam = cupy.ElementwiseKernel(
    "T grad, T lr, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, "
    "T correction1, T correction2",
    "T param, T m, T v",
    """
    m = beta1 * m + one_minus_beta1 * grad;
    v = beta2 * v + one_minus_beta2 * grad * grad;
    param -= lr * (m / correction1) / (sqrt(v / correction2) + eps);
    """,
    "numpy_ddpm_adam_update")


def adam_update(param, grad, m, v, t, lr, beta1, beta2, eps):
    T = param.dtype.type
    _adam(grad, T(lr), T(beta1), T(1 - beta1), T(beta2), T(1 - beta2), T(eps),
          T(1 - beta1 ** t), T(1 - beta2 ** t), param, m, v)


# The EMA of the weights, as optim.ema_update:  average -= (1 - decay) (average - param)
_ema = cupy.ElementwiseKernel(
    "T param, T one_minus_decay", "T average",
    "average -= one_minus_decay * (average - param);",
    "numpy_ddpm_ema_update")


def ema_update(average, param, decay):
    _ema(param, average.dtype.type(1 - decay), average)


# q(x_t | x_0), as training.q_sample:  x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
_q_sample = cupy.ElementwiseKernel(
    "T x0, T eps, T alpha_bar", "T xt",
    "xt = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps;",
    "numpy_ddpm_q_sample")


def q_sample(x0, t, eps, schedule):
    alpha_bar = schedule.alpha_bar[t].reshape((-1,) + (1,) * (x0.ndim - 1))     # (N, 1, ...)
    return _q_sample(x0, eps, alpha_bar)


# One step of Algorithm 2, as sampling.sampling_step:
#   x_{t-1} = (x_t - (1 - alpha_t) / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) + sigma_t z
_sampling_step = cupy.ElementwiseKernel(
    "T xt, T eps_hat, T z, T c_eps, T sqrt_alpha, T sigma", "T x",
    "x = (xt - c_eps * eps_hat) / sqrt_alpha + sigma * z;",
    "numpy_ddpm_sampling_step")
_last_sampling_step = cupy.ElementwiseKernel(
    "T xt, T eps_hat, T c_eps, T sqrt_alpha", "T x",
    "x = (xt - c_eps * eps_hat) / sqrt_alpha;",
    "numpy_ddpm_last_sampling_step")


def sampling_step(xt, eps_hat, z, t, schedule):
    alpha, alpha_bar, sigma = (schedule.host[k][t] for k in ("alpha", "alpha_bar", "sigma"))
    T = xt.dtype.type
    c_eps, sqrt_alpha = T((1 - alpha) / (1 - alpha_bar) ** 0.5), T(alpha ** 0.5)
    if z is None:
        return _last_sampling_step(xt, eps_hat, c_eps, sqrt_alpha)
    return _sampling_step(xt, eps_hat, z, c_eps, sqrt_alpha, T(sigma))


# One step of DDIM (eq. 12 of Song et al.), as ddim.ddim_step:
#   x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)
#   x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_hat + sigma_t z
_ddim_step = cupy.ElementwiseKernel(
    "T xt, T eps_hat, T z, T sqrt_one_minus_alpha_bar, T sqrt_alpha_bar, T sqrt_alpha_bar_prev, "
    "T c_direction, T sigma",
    "T x",
    "x = sqrt_alpha_bar_prev * ((xt - sqrt_one_minus_alpha_bar * eps_hat) / sqrt_alpha_bar) "
    "+ c_direction * eps_hat + sigma * z;",
    "numpy_ddpm_ddim_step")
_ddim_step_no_noise = cupy.ElementwiseKernel(
    "T xt, T eps_hat, T sqrt_one_minus_alpha_bar, T sqrt_alpha_bar, T sqrt_alpha_bar_prev, T c_direction",
    "T x",
    "x = sqrt_alpha_bar_prev * ((xt - sqrt_one_minus_alpha_bar * eps_hat) / sqrt_alpha_bar) "
    "+ c_direction * eps_hat;",
    "numpy_ddpm_ddim_step_no_noise")


def ddim_step(xt, eps_hat, z, t, t_prev, schedule, eta):
    alpha_bar, alpha_bar_prev, sigma = ddim.ddim_sigma(t, t_prev, schedule, eta)
    T = xt.dtype.type
    coefficients = (T((1 - alpha_bar) ** 0.5), T(alpha_bar ** 0.5), T(alpha_bar_prev ** 0.5),
                    T(max(0.0, 1 - alpha_bar_prev - sigma ** 2) ** 0.5))
    if z is None:
        return _ddim_step_no_noise(xt, eps_hat, *coefficients)
    return _ddim_step(xt, eps_hat, z, *coefficients, T(sigma))


# One step of DPM-Solver++, as dpm_solver.dpm_solver_update, with the coefficients of
# dpm_solver.dpm_solver_coefficients (host, double precision):
#   x0_hat = (x_s - sigma_s eps_hat) / alpha_s
#   x_t    = a x_s + b0 x0_hat + b1 x0_hat_s1 + b2 x0_hat_s2
# One kernel for the three orders: a lower order passes x_s for the missing x0_hat, with weight 0.
_dpm_solver_update = cupy.ElementwiseKernel(
    "T xs, T eps_hat, T x0_hat_s1, T x0_hat_s2, T alpha_s, T sigma_s, T a, T b0, T b1, T b2",
    "T xt, T x0_hat",
    """
    x0_hat = (xs - sigma_s * eps_hat) / alpha_s;
    xt = a * xs + b0 * x0_hat + b1 * x0_hat_s1 + b2 * x0_hat_s2;
    """,
    "numpy_ddpm_dpm_solver_update")


def dpm_solver_update(xs, eps_hat, s, t, before, schedule):
    alpha_s, sigma_s, a, b = dpm_solver.dpm_solver_coefficients(s, t, [s_i for s_i, _ in before], schedule)
    T = xs.dtype.type
    earlier = [x0_hat for _, x0_hat in before] + [xs] * (2 - len(before))
    b = b + [0.0] * (3 - len(b))
    return _dpm_solver_update(xs, eps_hat, *earlier, T(alpha_s), T(sigma_s), T(a), *(T(b_i) for b_i in b))


# SiLU, as activations.silu_forward and silu_and_slope: s = sigmoid(x), y = x s, and while
# training the slope s + y (1 - s) (s held in slope until then), in one pass. exp(-x) overflows
# to inf below x = -88 in float32, and 1 / (1 + inf) = 0 is the correctly rounded sigmoid there,
# as in the reference.
_silu_forward = cupy.ElementwiseKernel(
    "T x", "T y",
    "y = x * (1 / (1 + exp(-x)));",
    "numpy_ddpm_silu_forward")

_silu_and_slope = cupy.ElementwiseKernel(
    "T x", "T y, T slope",
    """
    slope = 1 / (1 + exp(-x));
    y = x * slope;
    slope = slope + y * (1 - slope);
    """,
    "numpy_ddpm_silu_and_slope")


def silu_forward(x):
    return _silu_forward(x)


def silu_and_slope(x):
    return _silu_and_slope(x)


# GroupNorm's element-wise end, as norm.scale_shift and scale_shift_in_place, on the
# (N, G, C/G, H*W) view of the centred input, with inv_sigma (N, G, 1, 1) and gamma, beta
# (G, C/G, 1) broadcast by cupy: three passes in one.
_groupnorm_scale_shift = cupy.ElementwiseKernel(
    "T centred, T inv_sigma, T gamma, T beta", "T xhat, T y",
    """
    xhat = centred * inv_sigma;
    y = xhat * gamma + beta;
    """,
    "numpy_ddpm_groupnorm_scale_shift")

_groupnorm_scale_shift_in_place = cupy.ElementwiseKernel(
    "T inv_sigma, T gamma, T beta", "T centred",
    "centred = centred * inv_sigma * gamma + beta;",
    "numpy_ddpm_groupnorm_scale_shift_in_place")


def groupnorm_scale_shift(centred, inv_sigma, gamma, beta):
    return _groupnorm_scale_shift(centred, inv_sigma, gamma, beta)


def groupnorm_scale_shift_in_place(centred, inv_sigma, gamma, beta):
    _groupnorm_scale_shift_in_place(inv_sigma, gamma, beta, centred)
    return centred


# name -> (fused kernel, the reference it must match)
REFERENCES = {
    "adam_update": (adam_update, optim.adam_update),
    "ema_update": (ema_update, optim.ema_update),
    "q_sample": (q_sample, training.q_sample),
    "sampling_step": (sampling_step, sampling.sampling_step),
    "ddim_step": (ddim_step, ddim.ddim_step),
    "dpm_solver_update": (dpm_solver_update, dpm_solver.dpm_solver_update),
    "silu_forward": (silu_forward, activations.silu_forward),
    "silu_and_slope": (silu_and_slope, activations.silu_and_slope),
    "groupnorm_scale_shift": (groupnorm_scale_shift, norm.scale_shift),
    "groupnorm_scale_shift_in_place": (groupnorm_scale_shift_in_place, norm.scale_shift_in_place),
}
REGISTRY = {name: fused for name, (fused, _) in REFERENCES.items()}
