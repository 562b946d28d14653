"""The base of the library's exceptions: every error it raises for a reason a user can fix
(a bad setting, a missing file, a backend this machine lacks) derives from `Error`, and the
command line prints its message as one line (app/cli.py)."""


class Error(Exception):
    """Something asked of numpy-ddpm cannot be done; the message says what, in one sentence."""
