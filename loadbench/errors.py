"""The exceptions that decide exit codes, defined once.

`BadInput` and its subclasses are input no retry can fix (exit 2): a pod
that fails this way fails its Job at once through podFailurePolicy. Anything
else is a failure a retry may cure (exit 1).
"""

from __future__ import annotations


class BadInput(ValueError):
    """Configuration or input that no retry can fix; the message says what to change."""


class ConfigError(BadInput):
    """A setting that is malformed or contradicts another; the message names the variable."""


class CheckpointError(BadInput):
    """The checkpoint is missing, incomplete or not the one asked for."""


class ModelError(BadInput):
    """A MODEL_ID that cannot be resolved."""


class NotInstalled(BadInput):
    """A library's package is absent: reported in a result document, never a crash."""


class NeedsCUDA(BadInput):
    """A library that only loads onto CUDA devices was asked for another device."""


class Transient(RuntimeError):
    """A failure a later attempt may not see (hub unreachable, API timeout): exit 3."""


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TRANSIENT, EXIT_NOT_WRITTEN = 0, 1, 2, 3, 4


def one_line(exc: BaseException) -> str:
    """`Type: message` folded onto one line, so the last line of a log says it all."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
