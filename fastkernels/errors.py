"""Errors a user can hit. Each carries one line that says what to do; the CLI prints it without a
traceback. Anything else that escapes is our bug and keeps its traceback."""


class FastKernelsError(Exception):
    """Base class of the errors the CLI reports as one line."""


class UsageError(FastKernelsError):
    """Bad input from the user: unknown model, bad level, missing file, impossible flag."""


class ResourceError(FastKernelsError):
    """The machine cannot do what was asked (a model that does not fit, no GPU for --cuda-only)."""
