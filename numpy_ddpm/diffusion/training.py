"""Algorithm 1 of Ho et al. (2020), as in the lecture: the training step of a denoising
diffusion model, with the forward process q(x_t | x_0) it draws from.

Everything works in the standardised space of the data, x0 = (x - mean) / std; time steps are
0-based array indices (see schedule.py). A conditional model (models/, nb_classes=K) takes
labels in 0..K, K being "no label"; `labels=None` everywhere is the unconditional model.
"""

from .. import backend
from ..nn import MSELoss


def q_sample(x0, t, eps, schedule):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, a draw of q(x_t | x_0).

    x0, eps: (N, ...)   t: (N,) integer step indices
    """
    xp = backend.xp
    alpha_bar = schedule.alpha_bar[t].reshape((-1,) + (1,) * (x0.ndim - 1))      # (N, 1, ...)
    return xp.sqrt(alpha_bar) * x0 + xp.sqrt(1 - alpha_bar) * eps


def loss_and_backward(model, x0, t, eps, schedule, labels=None, rng=None):
    """mean((eps - eps_theta(x_t, t[, y]))^2) for given t and eps (and labels y (N,), for a
    conditional model); leaves its gradient in the model. A model that `takes` "rng" (dropout:
    the U-Net) draws its masks from `rng`, the training step's generator."""
    xt = backend.fused("q_sample", q_sample)(x0, t, eps, schedule)
    condition = () if labels is None else (labels,)
    draws = {"rng": rng} if "rng" in getattr(model, "takes", ()) else {}
    eps_hat = model.forward(xt, schedule.network_time(t, x0.dtype), *condition, **draws)
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


class BatchRows:
    """A rank's rows of what `rng` draws for the whole batch of N: random(shape) draws
    (N,) + shape[1:] and returns `rows` of it. The model's own draws (the U-Net's dropout masks)
    on each rank of a distributed step are then the rows of those one process draws, so P ranks
    train as one does (each draws all N rows: dropout's numbers are cheap beside the network)."""

    def __init__(self, rng, rows, N):
        self.rng, self.rows, self.N = rng, rows, N

    def random(self, shape, dtype=None):
        full_shape = (self.N,) + tuple(shape[1:])
        return (self.rng.random(full_shape) if dtype is None else self.rng.random(full_shape, dtype=dtype))[self.rows]


def train_step(model, optimizer, x0, schedule, rng, ema=None, labels=None, cond_drop=0.1, comm=None,
               t_power=1.0):
    """Algorithm 1, one iteration on a batch x0 (standardised), with Adam (and the EMA).

    With labels y (N,) (a conditional model), each is replaced by the "no label" class K with
    probability `cond_drop`, so that one network learns both the conditional and the
    unconditional eps (classifier-free guidance). Returns the loss as a 0-d backend array:
    reading it (float(loss)) waits for the device.

    `comm` (app/distributed.py; None: one process) gives this rank its slice of the batch and
    sums the gradients over the ranks; the loss returned is then this rank's share of the
    batch's mean loss.
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
    mine = slice(None) if comm is None else comm.part(x0.shape[0])
    labels = None if labels is None else labels[mine]
    draws = rng if comm is None else BatchRows(rng, mine, x0.shape[0])     # dropout's masks: this rank's rows
    loss = loss_and_backward(model, x0[mine], t[mine], eps[mine], schedule, labels, draws)
    if comm is not None:
        loss = comm.sum_gradients(model.flat_grads, loss, x0.shape[0])
    optimizer.step()
    if ema is not None:
        ema.update()
    return loss
