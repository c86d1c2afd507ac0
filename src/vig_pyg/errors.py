"""The one error type for problems with the user's input.

Every input problem (a config key, a model name or option, a checkpoint, a data set, a
study file, an image) raises a subclass of :class:`VigPygError` whose message is one line
that names the problem and the fix. The command line catches this class, prints the
message and exits with status 2; anything else is a bug and keeps its traceback.

The subclasses also derive from ``ValueError`` so that code written against the earlier
``ValueError`` contract keeps working.
"""
from __future__ import annotations


class VigPygError(ValueError):
    """A problem with the user's input; the message is one line naming the fix."""


class ConfigError(VigPygError):
    """A problem with a run's configuration (a key, a value, a file it names)."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception from a third-party library, for quoting it inside our
    own one-line message (our own errors are one line already)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
