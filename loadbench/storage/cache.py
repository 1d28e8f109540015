"""Page-cache state of a checkpoint: measure it (mincore), evict it, fill it.

"Cold" is only a claim until the residency is measured: posix_fadvise is
advice, and some filesystems (network mounts, FUSE, some overlay setups)
ignore it. So every trial records the measured fraction, and a cold trial
that still finds its pages resident says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import re
from typing import Callable, Iterable

from loadbench.terminal import Progress

COLD_LIMIT = 0.05  # a "cold" trial with more resident than this is flagged
READ_CHUNK = 16 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value
PAGE = mmap.PAGESIZE
_BIT0 = bytes(b & 1 for b in range(256))


def _pages(path: str) -> bytes:
    """One byte a page of the file: 1 if it is in the page cache now, else 0 (mincore)."""
    size = os.path.getsize(path)
    if size == 0:
        return b""
    pages = (size + PAGE - 1) // PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {path} for mincore failed: {os.strerror(err)}")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mincore on {path} failed: {os.strerror(err)}")
            return bytes(vec).translate(_BIT0)  # bit 0 of each byte: page resident
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def _resident_pages(path: str) -> tuple[int, int]:
    pages = _pages(path)
    return pages.count(1), len(pages)


def missing(path: str) -> list[tuple[int, int]]:
    """(offset, bytes) of each run of the file's pages that is not in the page cache."""
    return [(m.start() * PAGE, (m.end() - m.start()) * PAGE) for m in re.finditer(b"\x00+", _pages(path))]


def residency(paths: Iterable[str]) -> float:
    """Fraction of the files' pages in the page cache now, by page count."""
    resident = total = 0
    for path in paths:
        r, t = _resident_pages(path)
        resident += r
        total += t
    return resident / total if total else 0.0


def evict(paths: Iterable[str]) -> None:
    """Ask the kernel to drop the files' clean pages; needs no privileges."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                os.fdatasync(fd)  # dirty pages cannot be dropped
            except OSError:
                pass  # read-only mounts refuse it; their pages are clean anyway
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


PROGRESS_BYTES = 2 << 30  # warming more than this shows progress


def warm(paths: Iterable[str], log: Callable[[str], None] | None = None) -> int:
    """Read every page of the files that is not in the page cache, so that all are resident;
    returns bytes read. A checkpoint already resident costs nothing again (a warm pod reads back
    only what the kernel reclaimed since: 13 GB re-read was ~2 s a trial); a cold 60 GB one
    takes minutes: with `log`, it shows progress."""
    runs = {path: missing(path) for path in paths}
    size = sum(n for todo in runs.values() for _, n in todo)
    progress = Progress("warming the page cache", size, log) if log and size > PROGRESS_BYTES else None
    view = memoryview(bytearray(READ_CHUNK))
    total = 0
    for path, todo in runs.items():
        if not todo:
            continue
        with open(path, "rb", buffering=0) as f:
            for offset, length in todo:
                end = offset + length
                while offset < end:
                    n = os.preadv(f.fileno(), [view[:min(READ_CHUNK, end - offset)]], offset)
                    if n <= 0:
                        break  # the last page's run ends past the end of the file
                    offset += n
                    total += n
                    if progress:
                        progress.advance(n)
    if progress and log:
        log(f"warmed {total / 1e9:.1f} GB in {progress.finish():.1f} s")
    return total


def prepare(mode: str, paths: list[str], log: Callable[[str], None] | None = None) -> float:
    """Bring the files into the state `mode` asks for; return measured residency."""
    if mode == "cold":
        evict(paths)
    elif mode == "warm":
        warm(paths, log)
    elif mode != "asis":
        raise ValueError(f"unknown cache mode {mode!r}")
    return residency(paths)


def check(mode: str, resident: float) -> str | None:
    """A warning when the measured state is not what was asked, else None."""
    if mode == "cold" and resident > COLD_LIMIT:
        return (f"cold was asked but {resident:.1%} of the checkpoint is still in the page cache "
                f"(limit {COLD_LIMIT:.0%}); this filesystem may ignore posix_fadvise(DONTNEED). "
                f"The trial is recorded with its measured residency, not as cold.")
    if mode == "warm" and resident < 1.0 - COLD_LIMIT:
        return (f"warm was asked but only {resident:.1%} of the checkpoint is in the page cache; "
                f"the machine may lack the memory to hold it.")
    return None
