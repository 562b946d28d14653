"""The names of the former layers.py, which now live in the engine (nn/) and, for the time
and label appenders, in models/conditioning.py."""

from .models.conditioning import LabelAppender, TimeAppender  # noqa: F401
from .nn import Conv2d, Dropout, Linear, Module, MSELoss, ReLU, Sequential, SoftmaxCrossEntropy, uniform  # noqa: F401

Layer = Module      # the base class's former name
