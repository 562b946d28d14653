"""Training (Algorithm 1) and sampling (Algorithm 2) of Ho et al. (2020), as in the lecture.

Everything works in the standardised space of the data, x0 = (x - mean) / std; time steps are
0-based array indices (see schedule.py).
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


def loss_and_backward(model, x0, t, eps, schedule):
    """mean((eps - eps_theta(x_t, t))^2) for given t and eps; leaves its gradient in the model."""
    xt = backend.fused("q_sample", q_sample)(x0, t, eps, schedule)
    eps_hat = model.forward(xt, schedule.network_time(t.astype(x0.dtype)))
    mse = MSELoss()
    loss = mse.forward(eps_hat, eps)
    model.zero_grad()
    model.backward(mse.backward())
    return loss


def train_step(model, optimizer, x0, schedule, rng, ema=None, comm=SINGLE):
    """Algorithm 1, one iteration on a batch x0 (standardised), with Adam (and the EMA).

    Returns the loss as a 0-d backend array: reading it (float(loss)) waits for the device.

    `comm` (distributed.py) gives this rank its slice of the batch and sums the gradients over
    the ranks; the loss returned is then this rank's share of the batch's mean loss.
    """
    # 2: x0 ~ q(x0): the batch
    # 3: t ~ Uniform({1, ..., T}), as indices 0..T-1
    t = rng.integers(0, schedule.T, size=x0.shape[0])
    # 4: eps ~ N(0, I)
    eps = rng.standard_normal(x0.shape, dtype=x0.dtype)
    # 5: gradient step on ||eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t)||^2
    #    (the lecture's figure writes alpha_t; the code, like the paper's eq. 14, uses alpha_bar_t)
    #    on this rank's rows of the batch (all of them in one process), and the all-reduce of
    #    the gradients makes it the whole batch's gradient on every rank (distributed.py)
    mine = comm.part(x0.shape[0])
    loss = loss_and_backward(model, x0[mine], t[mine], eps[mine], schedule)
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


def generate(model, shape, schedule, rng, progress=None, callback=None):
    """Algorithm 2: draw samples of `shape`, in the standardised space of the data.

    `progress` wraps the step iterator (e.g. a tqdm bar). `callback(t, x)` is called with x_T
    (t = T) and then after each step with x_t for t = T-1, ..., 0, in the paper's numbering.
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
        eps_hat = model.forward(x, schedule.network_time(t))
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
