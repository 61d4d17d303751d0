"""One base class for bad input, so every ``fba`` command reports it the same way.

Anything the user hands us (a config key or value, a data set folder, a captions file, a features file, a model
file) that is wrong raises a subclass of :class:`InputError` whose message names the file, key or value and what
is wrong with it. ``fba.cli`` prints that message on one line and exits with status 2; any other exception is a
bug of ours and keeps its traceback (docs/design.md, "Errors").
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message names the file, key or value and says what is wrong."""


class UsageError(InputError):
    """Command-line options that are missing, malformed or contradict each other."""
