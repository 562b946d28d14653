"""Denoising diffusion itself: the noise schedule (schedule.py), Algorithm 1 (training.py), the
reverse process with Algorithm 2 and classifier-free guidance (sampling.py), DDIM (ddim.py),
DPM-Solver++ (dpm_solver.py), and the variational bound (bound.py)."""

from .ddim import ddim_generate, ddim_sigma, ddim_step, ddim_timesteps
from .dpm_solver import dpm_solver_generate, dpm_solver_update, dpm_timesteps, solver_orders
from .sampling import generate, guided_eps, reverse_mean, reverse_process, sampling_step
from .schedule import Schedule
from .training import draw_timesteps, loss_and_backward, q_sample, train_step
