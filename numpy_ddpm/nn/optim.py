"""Adam (Kingma & Ba, 2015, Algorithm 1), the exponential moving average of the weights, and
the schedules of both over the steps of a run (learning-rate warm-up and decay, EMA warm-up).

Adam and the EMA work in place on a list of (param, grad) array pairs: pass
`model.flat_parameters()`'s one pair of whole-model buffers, or the per-layer arrays of
`model.parameters()`. The schedules are plain functions of the step count, so a resumed run
recomputes exactly the values an uninterrupted one used.
"""

import math

from .. import backend

LR_SCHEDULES = ("constant", "cosine", "linear")


def adam_update(param, grad, m, v, t, lr, beta1, beta2, eps):
    """One step of Adam on one array, in place; t is the step count, starting at 1."""
    xp = backend.xp
    m *= beta1
    m += (1 - beta1) * grad                         # m_t = beta1 m_{t-1} + (1 - beta1) g_t
    v *= beta2
    v += (1 - beta2) * grad * grad                  # v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    m_hat = m / (1 - beta1 ** t)                    # bias-corrected first moment
    v_hat = v / (1 - beta2 ** t)                    # bias-corrected second moment
    param -= lr * m_hat / (xp.sqrt(v_hat) + eps)    # theta_t = theta_{t-1} - lr m_hat / (sqrt(v_hat) + eps)


def adam_update_in_place(param, grad, m, v, t, lr, beta1, beta2, eps, a, b):
    """`adam_update` with the same operations in the same order, through two scratch arrays
    a and b instead of temporaries: bitwise the same result, several times faster on numpy,
    where every whole-model temporary costs fresh pages from the allocator."""
    xp = backend.xp
    m *= beta1
    m += xp.multiply(grad, 1 - beta1, out=a)                    # m = beta1 m + (1 - beta1) g
    v *= beta2
    xp.multiply(grad, 1 - beta2, out=a)
    v += xp.multiply(a, grad, out=a)                            # v = beta2 v + (1 - beta2) g^2
    xp.divide(m, 1 - beta1 ** t, out=a)                         # a = m_hat
    xp.divide(v, 1 - beta2 ** t, out=b)                         # b = v_hat
    xp.sqrt(b, out=b)
    b += eps                                                    # b = sqrt(v_hat) + eps
    xp.multiply(a, lr, out=a)
    param -= xp.divide(a, b, out=a)                             # param -= lr m_hat / (sqrt(v_hat) + eps)


class Adam:
    """Adam with PyTorch's defaults. `reset()` forgets the moments and the step count, as
    re-creating the optimiser at every epoch does in the lecture's code."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params = [(param, grad) for param, grad in params]
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.scratch = [(backend.xp.empty_like(p), backend.xp.empty_like(p)) for p, _ in self.params]
        self.reset()

    def reset(self):
        self.t = 0
        self.m = [backend.xp.zeros_like(param) for param, _ in self.params]
        self.v = [backend.xp.zeros_like(param) for param, _ in self.params]

    def state(self):
        """What a checkpoint keeps: {"t": the step count, "m": [...], "v": [...]}, the moments
        of each array in the order of `params` (the live arrays: copy to keep them)."""
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state(self, state):
        """Take a `state()` back (host or device arrays)."""
        _copy_into(self.m, state["m"], "Adam's first moments")
        _copy_into(self.v, state["v"], "Adam's second moments")
        self.t = int(state["t"])

    def step(self):
        self.t += 1
        fused = backend.fused("adam_update", None)
        for (param, grad), m, v, (a, b) in zip(self.params, self.m, self.v, self.scratch):
            args = (param, grad, m, v, self.t, self.lr, self.beta1, self.beta2, self.eps)
            if fused is not None:
                fused(*args)
            else:
                adam_update_in_place(*args, a, b)


def ema_update(average, param, decay):
    """average = decay * average + (1 - decay) * param, in place."""
    average -= (1 - decay) * (average - param)


def ema_update_in_place(average, param, decay, a):
    """`ema_update` through the scratch array a: the same operations, no temporaries."""
    backend.xp.subtract(average, param, out=a)
    average -= backend.xp.multiply(a, 1 - decay, out=a)


class EMA:
    """Exponential moving average of the weights (decay 0.9999 in the lecture).

    `copy_to_model()` writes the averages into the model (what the lecture does at the end of
    training).
    """

    def __init__(self, params, decay=0.9999):
        self.params = [param for param, _ in params]
        self.averages = [param.copy() for param in self.params]
        self.scratch = [backend.xp.empty_like(param) for param in self.params]
        self.decay = decay

    def update(self):
        fused = backend.fused("ema_update", None)
        for average, param, a in zip(self.averages, self.params, self.scratch):
            if fused is not None:
                fused(average, param, self.decay)
            else:
                ema_update_in_place(average, param, self.decay, a)

    def copy_to_model(self):
        for average, param in zip(self.averages, self.params):
            param[...] = average

    def state(self):
        """What a checkpoint keeps: {"averages": [...]}, in the order of `params`."""
        return {"averages": self.averages}

    def load_state(self, state):
        _copy_into(self.averages, state["averages"], "the EMA's averages")


def _copy_into(targets, sources, what):
    if len(sources) != len(targets) or any(s.shape != t.shape for s, t in zip(sources, targets)):
        raise ValueError(f"{what} do not match this model's parameters")
    for target, source in zip(targets, sources):
        target[...] = backend.asarray(source)


# Schedules over the steps of a run -----------------------------------------------------------

def learning_rate(step, base_lr, lr_schedule="constant", warmup_steps=0, total_steps=None):
    """The learning rate of step `step` (1, 2, ..., total_steps), for Adam's update at that step.

    Warm-up: lr = base_lr * step / warmup_steps for step <= warmup_steps; then, with
    p = (step - warmup_steps) / (total_steps - warmup_steps) in (0, 1]:
        "constant": lr = base_lr
        "cosine":   lr = base_lr * (1 + cos(pi p)) / 2        (Loshchilov & Hutter, 2017)
        "linear":   lr = base_lr * (1 - p)
    The last step of a decaying lr_schedule has lr 0, so it leaves the weights where they are.
    """
    if step <= warmup_steps:
        return base_lr * step / warmup_steps
    if lr_schedule == "constant":
        return base_lr
    p = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    if lr_schedule == "cosine":
        return base_lr * (1 + math.cos(math.pi * min(p, 1.0))) / 2
    if lr_schedule == "linear":
        return base_lr * max(1 - p, 0.0)
    raise ValueError(f"unknown learning-rate schedule {lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")


def ema_decay(step, decay, warmup=False):
    """The EMA decay at step `step` (1, 2, ...): `decay`, or with `warmup`
    min(decay, (1 + step) / (10 + step)), which averages over the last (10 + step) / 9 steps,
    about a ninth of the run so far (decay 0.5 at step 8, 0.9 at step 80, 0.99 at step 890),
    until it reaches `decay`: a short run is then not stuck near its initial weights."""
    if not warmup:
        return decay
    return min(decay, (1 + step) / (10 + step))
