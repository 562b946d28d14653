"""A CPU stand-in for cupy that is as strict as cupy about leaving the device.

Its arrays (StrictArray, a numpy subclass) support what cupy arrays support inside the
backend (operators, methods, the `xp` functions of this module), and refuse what cupy refuses
or what would cost a device sync on a GPU:
  - host numpy functions applied to them (`numpy.stack(device_array)`, `backend.np.sort(...)`):
    cupy raises TypeError for implicit conversion; here __array_function__ raises;
  - iteration in Python (`for v in array`): one device read per element on a GPU;
  - float(), int(), bool(), .item(), .tolist(): each a device sync; allowed but counted, so
    a test can bound them.
`.get()` is the one explicit way back to the host, as on cupy.
"""

import types

import numpy


class StrictArray(numpy.ndarray):
    syncs = 0

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} was called on a device array: "
                        "implicit conversion to a host array (cupy refuses it)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = [_host(x) for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(_host(x) for x in kwargs["out"])
        result = getattr(ufunc, method)(*inputs, **kwargs)
        return _wrap(result)

    def __iter__(self):
        raise TypeError("iterating over a device array in Python (one transfer per element)")

    def _sync(self):
        StrictArray.syncs += 1
        return self.view(numpy.ndarray)

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def item(self, *args):
        return self._sync().item(*args)

    def tolist(self):
        return self._sync().tolist()

    def get(self):
        return numpy.array(self.view(numpy.ndarray))


def _host(x):
    return x.view(numpy.ndarray) if isinstance(x, StrictArray) else x


def _wrap(x):
    if isinstance(x, numpy.generic):        # cupy's reductions give 0-d device arrays, not scalars
        return numpy.asarray(x).view(StrictArray)
    if isinstance(x, numpy.ndarray) and not isinstance(x, StrictArray):
        return x.view(StrictArray)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


def _device_function(f):
    def call(*args, **kwargs):
        args = [[_host(a) for a in x] if isinstance(x, (list, tuple)) else _host(x) for x in args]
        kwargs = {k: _host(v) for k, v in kwargs.items()}
        return _wrap(f(*args, **kwargs))
    return call


class _Module(types.ModuleType):
    """`xp` for the strict backend: numpy's functions, taking and giving StrictArrays."""

    def __getattr__(self, name):
        value = getattr(numpy, name)
        if callable(value) and not isinstance(value, type):
            return _device_function(value)
        return value


xp = _Module("strict_numpy")


class DeviceRandom:
    def __init__(self, seed):
        self._rng = numpy.random.default_rng(seed)

    def integers(self, low, high, size):
        return _wrap(self._rng.integers(low, high, size=size))

    def standard_normal(self, size, dtype=None):
        return _wrap(self._rng.standard_normal(size, dtype=dtype or numpy.float64))


def activate(backend):
    """Make `backend` (numpy_ddpm.backend) use the strict arrays; returns a restore function."""
    saved = backend.xp, backend.name, backend._device_random
    backend.xp, backend.name, backend._device_random = xp, "strict", DeviceRandom

    def restore():
        backend.xp, backend.name, backend._device_random = saved
    return restore
