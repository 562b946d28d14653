"""The forward (noising) process of Ho et al. (2020) and the lecture.

    beta_t = linspace(1e-4, 0.02, T),   alpha_t = 1 - beta_t,
    alpha_bar_t = prod_{s <= t} alpha_s = exp(cumsum(log alpha)),   sigma_t = sqrt(beta_t)

The paper counts time t = 1..T; arrays index t - 1, so `beta[0]` is beta_1 and `alpha_bar[T-1]`
is alpha_bar_T. The training and sampling code works with these 0-based indices throughout
(as does the lecture's code: `torch.randint(T, ...)`, `range(T-1, -1, -1)`).
"""

from .. import backend
from ..models.conditioning import network_time, step_of


class Schedule:
    """The schedule's arrays, computed in float64 and cast to the working dtype.

    alpha_bar_prev[t] is alpha_bar_{t-1} (1 for the first step). The posterior
    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I) has

        mu_tilde_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                     + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
    """

    def __init__(self, T=1000, beta_start=1e-4, beta_end=0.02):
        xp = backend.xp
        self.T = T
        beta = xp.linspace(beta_start, beta_end, T, dtype=xp.float64)
        alpha = 1 - beta
        alpha_bar = xp.exp(xp.cumsum(xp.log(alpha)))
        alpha_bar_prev = xp.concatenate((xp.ones(1), alpha_bar[:-1]))
        arrays = {
            "beta": beta,
            "alpha": alpha,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sigma": xp.sqrt(beta),
            "beta_tilde": (1 - alpha_bar_prev) / (1 - alpha_bar) * beta,
            "mu_tilde_coef_x0": xp.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar),
            "mu_tilde_coef_xt": xp.sqrt(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar),
        }
        for name, array in arrays.items():
            setattr(self, name, array.astype(backend.dtype))
        # float64 Python lists for the sampling loop, read once from the device
        self.host = {name: backend.to_numpy(array).tolist() for name, array in arrays.items()}

    def mu_tilde(self, xt, x0, t):
        """The posterior mean mu_tilde_t(x_t, x_0) for an integer step index t."""
        return self.mu_tilde_coef_x0[t] * x0 + self.mu_tilde_coef_xt[t] * xt

    def network_time(self, t, dtype=None):
        """What the network sees of the step index t: t / (T - 1) - 0.5 (models/conditioning.py)."""
        return network_time(t, self.T, dtype)

    def step_of(self, t):
        """The step index of a network time t, rounded: the inverse of network_time (float64)."""
        return step_of(t, self.T)
