"""The exceptions that decide exit codes, and the exit codes, defined once.

`BadInput` and its subclasses are input no retry can fix (exit 2): a pod
that fails this way fails its Job at once through podFailurePolicy.
`Transient` is a failure a later attempt may not see (exit 3). Anything else
is a failure a retry may cure (exit 1). Every entry point maps an exception
to its exit code with `exit_code(exc)`, never with its own table.
"""

from __future__ import annotations

import signal


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


EXIT_OK = 0           # every trial verified
EXIT_FAILED = 1       # a trial or step failed; a retry may pass
EXIT_BAD_INPUT = 2    # configuration or input no retry can fix (podFailurePolicy: FailJob)
EXIT_TRANSIENT = 3    # a failure a later attempt may not see (network, API timeout)
EXIT_NOT_WRITTEN = 4  # a result document could not be written (its log line is on stdout)

EXIT_MEANINGS = {
    EXIT_OK: "all trials verified",
    EXIT_FAILED: "a trial failed (retryable)",
    EXIT_BAD_INPUT: "bad configuration or input no retry can fix",
    EXIT_TRANSIENT: "transient failure (network, API timeout); retry later",
    EXIT_NOT_WRITTEN: "a result document could not be written (its LOADBENCH_RESULT line is on stdout)",
}


def exit_code(exc: BaseException) -> int:
    """The exit code an entry point returns for a failure that ended it."""
    if isinstance(exc, BadInput):
        return EXIT_BAD_INPUT
    if isinstance(exc, Transient):
        return EXIT_TRANSIENT
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return EXIT_FAILED


def one_line(exc: BaseException) -> str:
    """`Type: message` folded onto one line, so the last line of a log says it all."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
