"""Training (Algorithm 1) and sampling (Algorithm 2) of Ho et al. (2020), as in the lecture;
then where the lecture ends: DDIM sampling (Song, Meng & Ermon 2021) with the same trained
model, and classifier-free guidance (Ho & Salimans 2022) for both samplers. DPM-Solver++ (Lu et
al. 2022), a multistep solver of the same ODE as DDIM's, is in dpm_solver.py and re-exported here.

Everything works in the standardised space of the data, x0 = (x - mean) / std; time steps are
0-based array indices (see schedule.py). A conditional model (models.py, nb_classes=K) takes
labels in 0..K, K being "no label"; `labels=None` everywhere is the unconditional model.
"""

from . import backend
from .distributed import SINGLE
from .layers import MSELoss


def q_sample(x0, t, eps, schedule):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, a draw of q(x_t | x_0).

    x0, eps: (N, ...)   t: (N,) integer step indices
    """
    xp = backend.xp
    alpha_bar = schedule.alpha_bar[t].reshape((-1,) + (1,) * (x0.ndim - 1))      # (N, 1, ...)
    return xp.sqrt(alpha_bar) * x0 + xp.sqrt(1 - alpha_bar) * eps


def loss_and_backward(model, x0, t, eps, schedule, labels=None):
    """mean((eps - eps_theta(x_t, t[, y]))^2) for given t and eps (and labels y (N,), for a
    conditional model); leaves its gradient in the model."""
    xt = backend.fused("q_sample", q_sample)(x0, t, eps, schedule)
    condition = () if labels is None else (labels,)
    eps_hat = model.forward(xt, schedule.network_time(t.astype(x0.dtype)), *condition)
    mse = MSELoss()
    loss = mse.forward(eps_hat, eps)
    model.zero_grad()
    model.backward(mse.backward())
    return loss


def draw_timesteps(rng, T, n, power=1.0):
    """n step indices for Algorithm 1. power = 1: t ~ Uniform({0, ..., T-1}), the lecture's.
    Otherwise t = floor(T u^P), u ~ U[0, 1): P(t < k) = (k / T)^(1/P), a density like
    t^(1/P - 1), so P > 1 draws small t (little noise: fine detail) more often, P < 1 large t.
    Each step's loss is then weighted by T p(t) rather than 1: another weighting of the same
    objective's terms."""
    if power == 1:
        return rng.integers(0, T, size=n)
    return (T * rng.random(n) ** power).astype(backend.xp.int64)


def train_step(model, optimizer, x0, schedule, rng, ema=None, labels=None, cond_drop=0.1, comm=SINGLE,
               t_power=1.0):
    """Algorithm 1, one iteration on a batch x0 (standardised), with Adam (and the EMA).

    With labels y (N,) (a conditional model), each is replaced by the "no label" class K with
    probability `cond_drop`, so that one network learns both the conditional and the
    unconditional eps (classifier-free guidance). Returns the loss as a 0-d backend array:
    reading it (float(loss)) waits for the device.

    `comm` (distributed.py) gives this rank its slice of the batch and sums the gradients over
    the ranks; the loss returned is then this rank's share of the batch's mean loss.
    `t_power` > 1 draws small t more often (draw_timesteps); 1 is the lecture's uniform t.
    """
    # 2: x0 ~ q(x0): the batch
    # 3: t ~ Uniform({1, ..., T}), as indices 0..T-1
    t = draw_timesteps(rng, schedule.T, x0.shape[0], t_power)
    # 4: eps ~ N(0, I)
    eps = rng.standard_normal(x0.shape, dtype=x0.dtype)
    if labels is not None:
        # (guidance) y = K, "no label", with probability cond_drop
        labels = backend.xp.where(rng.random(x0.shape[0]) < cond_drop, model.nb_classes, labels)
    # 5: gradient step on ||eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t)||^2
    #    (the lecture's figure writes alpha_t; the code, like the paper's eq. 14, uses alpha_bar_t)
    #    on this rank's rows of the batch (all of them in one process), and the all-reduce of
    #    the gradients makes it the whole batch's gradient on every rank (distributed.py)
    mine = comm.part(x0.shape[0])
    labels = None if labels is None else labels[mine]
    loss = loss_and_backward(model, x0[mine], t[mine], eps[mine], schedule, labels)
    loss = comm.sum_gradients(model.flat_grads, loss, x0.shape[0])
    optimizer.step()
    if ema is not None:
        ema.update()
    return loss


def sampling_step(xt, eps_hat, z, t, schedule):
    """x_{t-1} = (x_t - (1 - alpha_t) / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) + sigma_t z,
    for an integer step index t (Python int); z = None means no noise (the last step)."""
    alpha, alpha_bar, sigma = (schedule.host[k][t] for k in ("alpha", "alpha_bar", "sigma"))
    x = (xt - (1 - alpha) / (1 - alpha_bar) ** 0.5 * eps_hat) / alpha ** 0.5
    if z is not None:
        x += sigma * z
    return x


def generate(model, shape, schedule, rng, progress=None, callback=None, labels=None, guidance=1.0):
    """Algorithm 2: draw samples of `shape`, in the standardised space of the data.

    `progress` wraps the step iterator (e.g. a tqdm bar). `callback(t, x)` is called with x_T
    (t = T) and then after each step with x_t for t = T-1, ..., 0, in the paper's numbering.
    `labels` (N,) and `guidance` s: classifier-free guidance of a conditional model (guided_eps).
    """
    training = getattr(model, "training", True)
    if hasattr(model, "train"):
        model.train(False)          # sampling needs no backward: keep nothing for it
    step = backend.fused("sampling_step", sampling_step)
    steps = range(schedule.T - 1, -1, -1)
    # 1: x_T ~ N(0, I)
    x = rng.standard_normal(shape, dtype=backend.dtype)
    if callback is not None:
        callback(schedule.T, x)
    # 2: for t = T, ..., 1      (here t is the array index, the paper's t - 1: T-1, ..., 0)
    for t in (progress(steps) if progress else steps):
        eps_hat = guided_eps(model, x, schedule.network_time(t), labels, guidance)
        # 3: z ~ N(0, I) if t > 1, else z = 0       (index t > 0)
        z = rng.standard_normal(shape, dtype=backend.dtype) if t > 0 else None
        # 4: x_{t-1} = (x_t - (1 - alpha_t) / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t) + sigma_t z
        x = step(x, eps_hat, z, t, schedule)
        if callback is not None:
            callback(t, x)
    if hasattr(model, "train"):
        model.train(training)
    # 6: return x_0
    return x


# Classifier-free guidance (Ho & Salimans 2022) -----------------------------------------------

def guided_eps(model, x, t, labels=None, guidance=1.0):
    """eps = eps_theta(x, t, null) + s (eps_theta(x, t, y) - eps_theta(x, t, null)), the
    lecture's convention: s = 1 is the plain conditional model, s = 0 the unconditional one
    (the "no label" class K = model.nb_classes), s > 1 pushes x_t towards its class and away
    from the others. The two eps come from one forward pass on the doubled batch [x; x] with
    labels [y; K]. labels=None: the unconditional model, eps_theta(x, t).

    x: (N, ...)   t: the network time (a float)   labels: (N,) integers in 0..K
    """
    xp = backend.xp
    if labels is None:
        return model.forward(x, t)
    labels = backend.asarray(labels)
    null = xp.full_like(labels, model.nb_classes)
    if guidance in (0, 1):          # one of the two halves alone: eps_theta(x, t, null) or eps_theta(x, t, y)
        return model.forward(x, t, null if guidance == 0 else labels)
    N = x.shape[0]
    eps = model.forward(xp.concatenate((x, x)), t, xp.concatenate((labels, null)))    # (2N, ...)
    eps_label, eps_null = eps[:N], eps[N:]
    return eps_null + guidance * (eps_label - eps_null)


# DDIM (Song, Meng & Ermon 2021) ------------------------------------------------------------

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
    training = getattr(model, "training", True)
    if hasattr(model, "train"):
        model.train(False)
    step = backend.fused("ddim_step", ddim_step)
    taus = ddim_timesteps(schedule.T, nb_steps, spacing).tolist()      # tau_S, ..., tau_1 on the host
    steps = list(zip(taus, taus[1:] + [-1]))                            # (tau_i, tau_{i-1})
    x = rng.standard_normal(shape, dtype=backend.dtype)                 # x_T ~ N(0, I)
    if callback is not None:
        callback(schedule.T, x)
    for t, t_prev in (progress(steps) if progress else steps):
        eps_hat = guided_eps(model, x, schedule.network_time(t), labels, guidance)
        z = rng.standard_normal(shape, dtype=backend.dtype) if eta > 0 and t_prev >= 0 else None
        x = step(x, eps_hat, z, t, t_prev, schedule, eta)
        if callback is not None:
            callback(t_prev + 1, x)
    if hasattr(model, "train"):
        model.train(training)
    return x


# DPM-Solver++ (Lu et al. 2022) lives in dpm_solver.py, which imports this module: it is re-exported
# here on first use, so that `from numpy_ddpm.diffusion import dpm_solver_generate` works without a cycle.
def __getattr__(name):
    if name == "dpm_solver_generate":
        from .dpm_solver import dpm_solver_generate
        return dpm_solver_generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
