"""Errors a user can act on: the CLI prints their message on one line, with no traceback."""


class StriateError(Exception):
    """A user-facing error (bad argument, missing data, incompatible checkpoint...)."""
