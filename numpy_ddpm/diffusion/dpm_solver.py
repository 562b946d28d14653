"""DPM-Solver++ (Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models"): the multistep solver of the diffusion ODE written
for the data prediction x0_hat, with the model trained by Algorithm 1, as diffusers'
DPMSolverMultistepScheduler runs it (algorithm_type "dpmsolver++", solver_type "midpoint",
final_sigmas_type "zero").

Notation. For a step index t (0-based, as in schedule.py; t = -1 is the end of sampling, where
alpha_bar is taken as 1):

    alpha_t = sqrt(alpha_bar_t)     sigma_t = sqrt(1 - alpha_bar_t)     lambda_t = log(alpha_t / sigma_t)
    x0_hat_t = (x_t - sigma_t eps_hat) / alpha_t          the data prediction ("predicted x_0" of DDIM)

(sigma_t is the paper's noise scale, x_t = alpha_t x_0 + sigma_t eps; not schedule.sigma, the
lecture's sqrt(beta_t).) A step goes from index s to index t < s, h = lambda_t - lambda_s > 0;
s1 and s2 are the indices of the steps before s, h_0 = lambda_s - lambda_s1, h_1 = lambda_s1 - lambda_s2.
The ODE's exact solution (the paper's section 4, for a data prediction model),

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0_hat(lambda) dlambda,

is what each order approximates, x0_hat taken constant (order 1), or extrapolated from the
x0_hat of the one or two steps before (orders 2 and 3: "multistep", one model evaluation a step).
"""

import math

from .. import backend
from .ddim import ddim_timesteps
from .sampling import reverse_process


def dpm_timesteps(T, nb_steps, spacing="trailing"):
    """The step indices s_S > ... > s_1 (0-based) that DPM-Solver++ visits, as an int array (S,),
    as diffusers' DPMSolverMultistepScheduler.set_timesteps places them:

        "linspace":  round(linspace(0, T - 1, S + 1)) reversed, less its last (0)
                     (T = 1000, S = 10: 999, 899, 799, 699, 599, 500, 400, 300, 200, 100)
        "leading":   arange(S + 1) * (T // (S + 1)) reversed, less its last (0)       (900, 810, ..., 90)
        "trailing":  round(arange(T, 0, -T / S)) - 1, DDIM's (ddim_timesteps)         (999, 899, ..., 99)

    After s_1 the solver steps to alpha_bar = 1 (x = x0_hat). This "leading" is the solver's own,
    not diffusers' DDIMScheduler's (arange(S) * (T // S) reversed: 900, 800, ..., 0): it places
    S + 1 points and drops index 0, so it fits at most T - 1 steps (at S = T every index is 0), as
    does "linspace" (at S = T two indices round alike); diffusers would take such repeated indices
    as steps of h = 0 and divide by it. Where the float arange of "trailing" gives S + 1 entries
    (S = 61, 103, ...), diffusers keeps the extra one, index -1; here it is cut, as DDIM's is.
    """
    xp = backend.xp
    if not 1 <= nb_steps <= T:
        raise ValueError(f"DPM-Solver++ takes 1 to T = {T} steps, not {nb_steps}")
    if spacing == "trailing":
        return ddim_timesteps(T, nb_steps, "trailing")
    if spacing not in ("leading", "linspace"):
        raise ValueError(f"unknown spacing {spacing!r}: choose 'leading', 'trailing' or 'linspace'")
    if nb_steps == T:
        raise ValueError(f"the {spacing!r} spacing places S + 1 points on the T = {T} indices and fits "
                         f"at most {T - 1} steps, not {T}: take fewer steps or 'trailing'")
    if spacing == "leading":
        return (xp.arange(nb_steps + 1) * (T // (nb_steps + 1)))[::-1][:-1]
    return xp.round(xp.linspace(0, T - 1, nb_steps + 1)).astype(xp.int64)[::-1][:-1]


def solver_orders(nb_steps, order, lower_order_final=True):
    """The order of each of the nb_steps steps, as diffusers chooses it: min(order, i + 1) at step
    i = 0, 1, ... (step i has only i data predictions before it), 1 at the last step (to sigma = 0:
    x = x0_hat, whatever the order), and with `lower_order_final` and fewer than 15 steps at most 2
    at the step before it ("improve numerical stability for small number of steps"). With order
    <= 2 the flag thus changes nothing. The authors' code lowers the last orders below 10 steps
    only, and ends at a small t > 0 rather than at x0_hat."""
    orders = []
    for i in range(nb_steps):
        k = min(order, i + 1)
        if i == nb_steps - 1:
            k = 1
        elif i == nb_steps - 2 and lower_order_final and nb_steps < 15:
            k = min(k, 2)
        orders.append(k)
    return orders


def alpha_sigma_lambda(t, schedule):
    """(alpha_t, sigma_t, lambda_t) of step index t as host floats (float64); t = -1: (1, 0, inf)."""
    alpha_bar = schedule.host["alpha_bar"][t] if t >= 0 else 1.0
    alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    return alpha, sigma, (math.log(alpha / sigma) if sigma > 0 else math.inf)


def dpm_solver_coefficients(s, t, earlier, schedule):
    """The step from index s to index t < s as host floats (float64): (alpha_s, sigma_s, a, b),

        x_t = a x_s + b[0] x0_hat_s + b[1] x0_hat_s1 + b[2] x0_hat_s2,

    of order len(b) = 1 + len(earlier), `earlier` being [s1] or [s1, s2] (newest first). With
    phi_1 = e^{-h} - 1 (< 0) and r0 = h_0 / h, r1 = h_1 / h:

    order 1 (DPM-Solver++1, DDIM at eta = 0):
        x_t = (sigma_t / sigma_s) x_s - alpha_t phi_1 x0_hat_s
    order 2 (DPM-Solver++(2M), the paper's Algorithm 2; diffusers' "midpoint"):
        D   = x0_hat_s + (x0_hat_s - x0_hat_s1) / (2 r0)
        x_t = (sigma_t / sigma_s) x_s - alpha_t phi_1 D
    order 3 (3M, as diffusers writes it after the authors' code, dpm_solver_pytorch.py):
        D1_0 = (x0_hat_s - x0_hat_s1) / r0,    D1_1 = (x0_hat_s1 - x0_hat_s2) / r1
        D1   = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)      ~ h x0_hat'      (' = d/dlambda)
        D2   = (D1_0 - D1_1) / (r0 + r1)                ~ h^2 x0_hat'' / 2
        phi_2 = phi_1 / h + 1,   phi_3 = phi_2 / h - 1/2
        x_t = (sigma_t / sigma_s) x_s - alpha_t phi_1 x0_hat_s + alpha_t phi_2 D1 - alpha_t phi_3 D2

    This order 3 departs from the exact solution's Taylor expansion, whose term in x0_hat'' is
    -alpha_t phi_3 h^2 x0_hat'', twice what -alpha_t phi_3 D2 gives: the 3M step is exact for a
    linear x0_hat(lambda) but not for a quadratic one (local error O(h^3) like 2M's, with a smaller
    constant), while diffusers' singlestep third order (DPMSolverSinglestepScheduler) does take
    D2 ~ h^2 x0_hat''. We follow the reference. The last step (t = -1: sigma_t = 0, h = inf) is of
    order 1, x_t = x0_hat_s.
    """
    alpha_s, sigma_s, lambda_s = alpha_sigma_lambda(s, schedule)
    alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(t, schedule)
    h = lambda_t - lambda_s
    phi_1 = math.expm1(-h)                          # -1 at the last step, where h = inf
    a = sigma_t / sigma_s
    if not earlier:
        return alpha_s, sigma_s, a, [-alpha_t * phi_1]
    lambdas = [alpha_sigma_lambda(s_i, schedule)[2] for s_i in earlier]
    r0 = (lambda_s - lambdas[0]) / h
    if len(earlier) == 1:
        # D = (1 + 1 / (2 r0)) x0_hat_s - 1 / (2 r0) x0_hat_s1
        return alpha_s, sigma_s, a, [-alpha_t * phi_1 * (1 + 1 / (2 * r0)), alpha_t * phi_1 / (2 * r0)]
    r1 = (lambdas[0] - lambdas[1]) / h
    phi_2 = phi_1 / h + 1
    phi_3 = phi_2 / h - 0.5
    # each D as its weights on (x0_hat_s, x0_hat_s1, x0_hat_s2)
    d1_0 = (1 / r0, -1 / r0, 0.0)
    d1_1 = (0.0, 1 / r1, -1 / r1)
    d1 = [u + r0 / (r0 + r1) * (u - v) for u, v in zip(d1_0, d1_1)]
    d2 = [(u - v) / (r0 + r1) for u, v in zip(d1_0, d1_1)]
    d0 = (1.0, 0.0, 0.0)                                                # x0_hat_s itself
    b = [alpha_t * (-phi_1 * m + phi_2 * p - phi_3 * q) for m, p, q in zip(d0, d1, d2)]
    return alpha_s, sigma_s, a, b


def dpm_solver_update(xs, eps_hat, s, t, before, schedule):
    """One step of DPM-Solver++ from index s to index t < s (-1: the last step), for Python
    integers s, t: x_t from x_s and eps_hat = eps_theta(x_s, s), and the data predictions of the
    steps before, `before` = [(s1, x0_hat_s1)] or [(s1, x0_hat_s1), (s2, x0_hat_s2)] (newest first;
    [] for order 1). The coefficients are computed on the host in float64
    (dpm_solver_coefficients, which writes each order's formula). Returns (x_t, x0_hat_s).

    xs, eps_hat, x0_hat_i: (N, ...)
    """
    alpha_s, sigma_s, a, b = dpm_solver_coefficients(s, t, [s_i for s_i, _ in before], schedule)
    x0_hat = (xs - sigma_s * eps_hat) / alpha_s                         # the data prediction at s
    xt = a * xs + b[0] * x0_hat
    for b_i, (_, x0_hat_i) in zip(b[1:], before):
        xt += b_i * x0_hat_i
    return xt, x0_hat


def dpm_solver_generate(model, shape, schedule, rng, nb_steps=20, order=2, spacing="trailing",
                        lower_order_final=True, progress=None, callback=None, labels=None, guidance=1.0):
    """DPM-Solver++ sampling: samples of `shape` in the standardised space of the data, with the
    model trained by Algorithm 1, in nb_steps steps (dpm_timesteps) of `order` 1, 2 or 3
    (dpm_solver_update; lower orders at the first steps and the last ones, solver_orders). One
    model evaluation a step; deterministic given x_T ~ N(0, I), drawn as ddim_generate draws it.
    `progress`, `callback(t, x)` (t in the paper's numbering: T, then t + 1 after each step from
    s to t, down to 0), `labels` and `guidance` as for `generate`.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ has orders 1, 2 and 3, not {order}")
    taus = dpm_timesteps(schedule.T, nb_steps, spacing).tolist()       # on the host
    orders = solver_orders(len(taus), order, lower_order_final)
    update = backend.fused("dpm_solver_update", dpm_solver_update)
    orders = iter(orders)
    before = []                                                         # (s_i, x0_hat_i), newest first

    def step(x, eps_hat, s, t):
        nonlocal before
        k = next(orders)                                                # this step's order
        x, x0_hat = update(x, eps_hat, s, t, before[:k - 1], schedule)
        before = [(s, x0_hat)] + before[:1]
        return x

    steps = list(zip(taus, taus[1:] + [-1]))                            # (s, t)
    return reverse_process(model, shape, schedule, rng, steps, step, progress, callback, labels, guidance)
