"""DDIM sampling (Song, Meng & Ermon 2021): the model trained by Algorithm 1, sampled in a few
steps of eq. 12, deterministically at eta = 0."""

from .. import backend
from .sampling import reverse_process


def ddim_timesteps(T, nb_steps, spacing="trailing"):
    """The step indices tau_S > ... > tau_1 (0-based) that DDIM visits, as an int array (S,),
    in the two conventions of diffusers' DDIMScheduler:

        "leading":   arange(S) * (T // S), reversed      (T = 1000, S = 10: 900, 800, ..., 0)
        "trailing":  round(arange(T, 0, -T / S)) - 1     (T = 1000, S = 10: 999, 899, ..., 99)

    The previous index of each step is the next entry, and -1 after the last. "trailing" starts
    from the last index, where x_T is nearly pure noise, as the sampler assumes; "leading"
    leaves out the last T // S - 1 steps of the schedule.
    """
    xp = backend.xp
    if not 1 <= nb_steps <= T:
        raise ValueError(f"DDIM takes 1 to T = {T} steps, not {nb_steps}")
    if spacing == "leading":
        return (xp.arange(nb_steps) * (T // nb_steps))[::-1]
    if spacing == "trailing":
        # arange with a float step gives one entry too many for some S (61, 103, ...): cut it
        return (xp.round(xp.arange(T, 0, -T / nb_steps)).astype(xp.int64) - 1)[:nb_steps]
    raise ValueError(f"unknown spacing {spacing!r}: choose 'leading' or 'trailing'")


def ddim_sigma(t, t_prev, schedule, eta):
    """(alpha_bar_t, alpha_bar_prev, sigma_t) of a DDIM step from index t to t_prev, in float64:
    sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)."""
    alpha_bar = schedule.host["alpha_bar"][t]
    alpha_bar_prev = schedule.host["alpha_bar"][t_prev] if t_prev >= 0 else 1.0
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)) ** 0.5 * (1 - alpha_bar / alpha_bar_prev) ** 0.5
    return alpha_bar, alpha_bar_prev, sigma


def ddim_step(xt, eps_hat, z, t, t_prev, schedule, eta):
    """One step of eq. 12 of Song et al., from index t to index t_prev < t (-1: the last step,
    where alpha_bar is taken as 1), for Python integers t, t_prev:

        x0_hat  = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)           "predicted x_0"
        sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
        x_prev  = sqrt(alpha_bar_prev) x0_hat                                          (the scaled x_0)
                  + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_hat                       "direction pointing to x_t"
                  + sigma_t z                                                          "random noise"

    z may be None when eta = 0 (and at the last step, where sigma_t = 0). The coefficients are
    computed on the host in float64.
    """
    alpha_bar, alpha_bar_prev, sigma = ddim_sigma(t, t_prev, schedule, eta)
    x0_hat = (xt - (1 - alpha_bar) ** 0.5 * eps_hat) / alpha_bar ** 0.5                  # predicted x_0
    direction = max(0.0, 1 - alpha_bar_prev - sigma ** 2) ** 0.5 * eps_hat               # pointing to x_t
    x_prev = alpha_bar_prev ** 0.5 * x0_hat + direction
    if z is not None:
        x_prev += sigma * z                                                               # random noise
    return x_prev


def ddim_generate(model, shape, schedule, rng, nb_steps=50, eta=0.0, spacing="trailing",
                  progress=None, callback=None, labels=None, guidance=1.0):
    """DDIM sampling: samples of `shape` in the standardised space of the data, with the model
    trained by Algorithm 1, in nb_steps steps (ddim_timesteps) of eq. 12 (ddim_step).

    eta = 0: deterministic given x_T (an ODE-like map from noise to data). eta = 1 with all
    T steps ("leading", nb_steps = T) is Algorithm 2 with sigma_t = sqrt(beta_tilde_t) (the
    posterior's std of schedule.py), not the lecture's sigma_t = sqrt(beta_t): the two choices
    of Ho et al. (section 3.2), which sample alike there. `progress`, `callback(t, x)` (t in the
    paper's numbering: T, then tau_{i-1} + 1 after each step, down to 0), `labels` and
    `guidance` as for `generate`.
    """
    update = backend.fused("ddim_step", ddim_step)
    taus = ddim_timesteps(schedule.T, nb_steps, spacing).tolist()      # tau_S, ..., tau_1 on the host
    steps = list(zip(taus, taus[1:] + [-1]))                            # (tau_i, tau_{i-1})

    def step(x, eps_hat, t, t_prev):
        z = rng.standard_normal(shape, dtype=backend.dtype) if eta > 0 and t_prev >= 0 else None
        return update(x, eps_hat, z, t, t_prev, schedule, eta)

    return reverse_process(model, shape, schedule, rng, steps, step, progress, callback, labels, guidance)
