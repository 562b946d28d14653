"""The error of the data layer, and the check of a data set's name."""

from ..errors import Error


class DataError(Error, ValueError):
    """A data set that cannot be had: unknown name, missing files, bad format."""


def require(name, names, kind="data set"):
    """Raise DataError, listing the valid names, unless `name` is one of `names`."""
    if name not in names:
        raise DataError(f"unknown {kind} {name!r}; choose one of: {', '.join(names)}")
