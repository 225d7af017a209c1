"""The one exception type users see: a message that names what is at fault and how to fix it.

The CLI turns an `EdgekitError` into a single line on stderr and exit code 1; anything else is a bug
and keeps its traceback.
"""


class EdgekitError(Exception):
    """A user-facing failure; `str(error)` is the whole one-line message."""


class TooLarge(EdgekitError):
    """A file from elsewhere is over the size its caller allows; the caller adds how to allow more."""
