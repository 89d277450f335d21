"""Exception hierarchy of peftkit.

Every error peftkit raises on purpose derives from :class:`PeftkitError`. Messages name the
offending value and say how to fix it, so that a user never has to read a traceback from deep
inside torch or peft to understand what went wrong.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PeftkitError(Exception):
    """Base class of every error raised by peftkit."""


class UnknownMethodError(PeftkitError, KeyError):
    """A method name is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message.
        return str(self.args[0]) if self.args else ""


class InvalidOptionError(PeftkitError, ValueError):
    """An option has a wrong value, a wrong type, or an unknown name."""


class UnsupportedArchitectureError(PeftkitError, ValueError):
    """peftkit has no default targets for this architecture and none were given."""


class NoTargetsMatchedError(PeftkitError, ValueError):
    """The requested target modules match nothing in the model."""


class AlreadyWrappedError(PeftkitError, ValueError):
    """The model already carries an adapter of the same name."""


class NotWrappedError(PeftkitError, ValueError):
    """An adapter operation was asked of a model that carries no peftkit adapter."""


class AdapterFileError(PeftkitError, ValueError):
    """An adapter directory or file is missing, truncated, corrupted or inconsistent."""


class BaseModelMismatchError(PeftkitError, ValueError):
    """An adapter is being loaded onto a base model other than the one it was trained on."""


class QuantizationError(PeftkitError, RuntimeError):
    """8-bit loading or an 8-bit code path cannot do what was asked."""


class MergeError(PeftkitError, ValueError):
    """Adapters cannot be merged or combined as asked."""


class ConfigError(PeftkitError, ValueError):
    """A recipe or benchmark configuration file or override is invalid."""


class DataError(PeftkitError, ValueError):
    """A data file cannot be read (names the file and the line)."""


class TrainingError(PeftkitError, RuntimeError):
    """Training cannot continue (non-finite loss, bad checkpoint, ...)."""


class ModelPathError(PeftkitError, OSError):
    """A base-model path holds no transformers model: missing, a file, an adapter directory, ...

    Also an :class:`OSError`, as transformers' own error for a missing model is.
    """

    def __str__(self) -> str:  # OSError would otherwise format a tuple of arguments
        return str(self.args[0]) if self.args else ""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to ``name``, or ``None`` if nothing is similar.

    Args:
        name: The (misspelled) name a user gave.
        candidates: The valid names.

    Returns:
        The best match according to :func:`difflib.get_close_matches`, if any.

    Example:
        >>> closest("lroa", ["lora", "adalora", "adapter"])
        'lora'

    """
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or an empty string."""
    best = closest(name, candidates)
    return f" Did you mean {best!r}?" if best else ""


class _WriteErrorMixin(OSError):
    """An :class:`OSError` (keeping ``errno`` / ``filename``) whose message is peftkit's own."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @classmethod
    def wrap(cls, message: str, cause: OSError) -> _WriteErrorMixin:
        """Build the error from ``message``, copying ``errno``, ``strerror`` and ``filename`` of ``cause``."""
        error = cls(message)
        error.errno, error.strerror, error.filename = cause.errno, cause.strerror, cause.filename
        return error


class AdapterWriteError(_WriteErrorMixin, AdapterFileError):
    """Saving an adapter failed (no space left, read-only, permissions); the previous adapter is intact.

    Also an :class:`OSError` with the original ``errno``, so ``except OSError`` keeps working.
    """


class CheckpointWriteError(_WriteErrorMixin, TrainingError):
    """Writing a training checkpoint failed (no space left, ...); the previous checkpoints are intact.

    Also an :class:`OSError` with the original ``errno``.
    """
