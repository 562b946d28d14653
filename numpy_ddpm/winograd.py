"""The names of the former winograd.py, which now lives in nn/winograd.py."""

from .nn.winograd import *  # noqa: F403
