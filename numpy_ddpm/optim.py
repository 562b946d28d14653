"""The names of the former optim.py, which now lives in nn/optim.py."""

from .nn.optim import *  # noqa: F403
from .nn.optim import adam_update, adam_update_in_place, ema_update, ema_update_in_place  # noqa: F401
