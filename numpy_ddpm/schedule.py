"""The names of the former schedule.py, which now lives in diffusion/schedule.py."""

from .diffusion.schedule import Schedule  # noqa: F401
