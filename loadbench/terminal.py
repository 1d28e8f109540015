"""What people read on a terminal: aligned tables, human numbers, progress.

Shared by producers and the reporter, so it imports nothing of either.
"""

from __future__ import annotations

import sys
import textwrap
import time
from typing import Callable, Sequence


def logger(prefix: str) -> Callable[[str], None]:
    """Progress and problems go to stderr, one `prefix: message` line each; stdout stays data."""
    return lambda message: print(f"{prefix}: {message}", file=sys.stderr, flush=True)


def text_table(table: Sequence[Sequence[str]], wrap: int = 0) -> str:
    """Left-aligned columns; the first row is the header. Cells longer than
    `wrap` are wrapped onto continuation lines, never cut."""
    cells = [[textwrap.wrap(str(c), wrap) or [""] if wrap else [str(c)] for c in row] for row in table]
    widths = [max(len(line) for row in cells for line in row[i]) for i in range(len(table[0]))]
    out = []
    for row in cells:
        for k in range(max(len(c) for c in row)):
            out.append("  ".join((c[k] if k < len(c) else "").ljust(w)
                                 for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def median_rate(seconds: Sequence[float], nbytes: int | None) -> tuple[float | None, float | None]:
    """(median seconds, GB/s of nbytes at that median) for a terminal line; None where unknown.
    The reports compute their statistics from the raw samples themselves (analysis/)."""
    import statistics
    med = statistics.median(seconds) if seconds else None
    return med, (nbytes / med / 1e9 if med and nbytes else None)


def human_count(n: float) -> str:
    """3448704 -> '3.4 M', 6050882784 -> '6.05 B'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n:g}"


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


class Progress:
    """Progress of long work: a redrawn bar on a terminal, a plain line every
    `every` seconds elsewhere (pods), and a closing summary line either way."""

    def __init__(self, what: str, total: float, log: Callable[[str], None], every: float = 10.0,
                 unit: Callable[[float], str] = human_bytes) -> None:
        self.what, self.total, self.log, self.every, self.unit = what, total, log, every, unit
        self.done = 0.0
        self.start = self._last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def advance(self, amount: float) -> None:
        self.done += amount
        now = time.perf_counter()
        if self.tty:
            frac = self.done / self.total if self.total else 1.0
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r{self.what}: [{bar:<30}] {frac:4.0%} {self.unit(self.done)}")
            sys.stderr.flush()
        elif now - self._last >= self.every:
            self._last = now
            self.log(f"{self.what}: {self.unit(self.done)} of {self.unit(self.total)} "
                     f"({self.done / self.total:.0%}) after {now - self.start:.0f} s")

    def finish(self) -> float:
        seconds = time.perf_counter() - self.start
        if self.tty:
            sys.stderr.write("\n")
        return seconds


class FolderWatch:
    """Progress of a writer that has no callback: the size of the folder it writes,
    checked every `interval` seconds from a thread (cheap: one scandir)."""

    def __init__(self, folder: str, total: int, what: str, log: Callable[[str], None],
                 interval: float = 2.0) -> None:
        import threading
        self.folder, self.interval = folder, interval
        self.progress = Progress(what, total, log)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        import os
        total = 0
        for root, _, files in os.walk(self.folder):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            size = self._size()
            self.progress.advance(size - self.progress.done)

    def __enter__(self) -> "FolderWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.progress.finish()
