"""The image tier's timings, printed after the results (pytest captures fixture output)."""

from __future__ import annotations

import pytest

TIMINGS = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    text = config.stash.get(TIMINGS, None)
    if text:
        terminalreporter.write_line("\n" + text)
