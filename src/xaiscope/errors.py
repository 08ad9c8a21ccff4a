"""Errors a user can cause.

Every error that bad input, a bad configuration or a bad model can cause is an
:class:`XaiscopeError` whose message is one clear sentence naming the offending file,
key or value. The CLI prints that sentence and exits with status 2, without a
traceback (``--debug`` shows it).
"""

from __future__ import annotations


class XaiscopeError(Exception):
    """Base class of every error a user can cause."""


class DataError(XaiscopeError):
    """An image, mask, label or data folder cannot be used."""


class ModelError(XaiscopeError):
    """A model spec, weights file or model output cannot be used."""


class MethodError(XaiscopeError):
    """An explanation method or one of its hyperparameters is unknown or invalid."""


class MetricError(XaiscopeError):
    """A metric or one of its settings is unknown or invalid."""


class ConfigError(XaiscopeError):
    """A configuration file or value is invalid."""


class OutputError(XaiscopeError):
    """An output path cannot be written."""


class StaleResultsError(XaiscopeError):
    """Stored results were computed from inputs (model weights, images, settings) that have
    changed since; they are neither reused nor deleted without being asked to."""


class NumericalError(XaiscopeError):
    """A computation produced non-finite values where finite ones are required."""


def did_you_mean(name: str, options) -> str:
    """Return ' (did you mean X?)' for the closest option, or ''."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
