"""reference: loadbench's own instrument for what this machine achieves end to end.

Not a product, and not tuned for any one machine: a plain pipeline anyone can
read in a minute. Reader threads `preadv` the safetensors data sections in
fixed chunks into a ring of pinned host buffers; each chunk is copied on the
thread's own CUDA stream into one device allocation; every tensor is a view
of that allocation, placed by the safetensors header. Pinning the ring is
inside the timed region (it costs ~0.5 s per GiB), so the ring stays small.
On a CPU device the chunks are read straight into the destination.

The gap between this loader and the component ceilings is what no loader
can be blamed for; the gap between a library and this loader is what that
library leaves on the table.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
from dataclasses import dataclass
from typing import Any

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext, TPPlan
from loadbench.loaders.safetensors_lib import assign, weight_files

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
DEFAULT_THREADS, DEFAULT_CHUNK, DEFAULT_BUFFERS = 8, 32 << 20, 16


def import_package() -> None:
    return None  # needs nothing beyond torch


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # offset in the device allocation
    nbytes: int


def layout(paths: list[str]) -> tuple[list[Entry], list[tuple[str, int, int, int]], int]:
    """(tensors, file sections as (path, file offset, allocation offset, bytes), total bytes)."""
    entries: list[Entry] = []
    sections: list[tuple[str, int, int, int]] = []
    base = 0
    for path in paths:
        with open(path, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hlen))
        header.pop("__metadata__", None)
        data_start = 8 + hlen
        size = os.path.getsize(path) - data_start
        sections.append((path, data_start, base, size))
        for name, meta in header.items():
            begin, end = meta["data_offsets"]
            entries.append(Entry(name, DTYPES[meta["dtype"]], tuple(meta["shape"]), base + begin,
                                 end - begin))
        base += size + (-size) % 256  # keep every file's data aligned in the allocation
    return entries, sections, base


def _chunks(sections: list[tuple[str, int, int, int]], chunk: int) -> list[tuple[str, int, int, int]]:
    out = []
    for path, foff, doff, size in sections:
        for o in range(0, size, chunk):
            out.append((path, foff + o, doff + o, min(chunk, size - o)))
    return out


def _read_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"short read at offset {offset + done}")
        done += n


def _host_bytes(t: torch.Tensor) -> memoryview:
    """A writable view of a host uint8 tensor's memory."""
    array: Any = t.numpy()  # numpy declares the buffer protocol to mypy only for Python >= 3.12
    return memoryview(array)


def read_into(dest: torch.Tensor, sections: list[tuple[str, int, int, int]], threads: int, chunk: int,
              buffers: int) -> None:
    """Fill `dest` (uint8, on any device) with the sections' bytes."""
    work: queue.SimpleQueue = queue.SimpleQueue()
    for item in _chunks(sections, chunk):
        work.put(item)
    fds = {path: os.open(path, os.O_RDONLY) for path, *_ in sections}
    errors: list[BaseException] = []
    cuda = dest.device.type == "cuda"
    per_thread = max(1, buffers // threads)

    def worker() -> None:
        try:
            if cuda:
                stream = torch.cuda.Stream(device=dest.device)
                ring = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(per_thread)]
                events: list[torch.cuda.Event | None] = [None] * per_thread
                i = 0
            while not errors:
                try:
                    path, foff, doff, n = work.get_nowait()
                except queue.Empty:
                    break
                if not cuda:
                    _read_all(fds[path], _host_bytes(dest[doff:doff + n]), foff)
                    continue
                slot = i % per_thread
                previous = events[slot]
                if previous is not None:
                    previous.synchronize()  # the copy out of this buffer is done
                buf = ring[slot][:n]
                _read_all(fds[path], _host_bytes(buf), foff)
                with torch.cuda.stream(stream):
                    dest[doff:doff + n].copy_(buf, non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record(stream)
                events[slot] = ev
                i += 1
            if cuda:
                stream.synchronize()
        except BaseException as e:  # reported to the caller
            errors.append(e)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    try:
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        for fd in fds.values():
            os.close(fd)
    if errors:
        raise errors[0]


def tensors(dest: torch.Tensor, entries: list[Entry]) -> dict[str, torch.Tensor]:
    return {e.name: dest[e.start:e.start + e.nbytes].view(e.dtype).view(e.shape) for e in entries}


def _shape(ctx: LoadContext) -> tuple[int, int, int]:
    """(threads, chunk bytes, ring buffers) from the options; the ring has a buffer per thread."""
    threads = ctx.options.get("threads") or DEFAULT_THREADS
    chunk = ctx.options.get("chunk_bytes") or DEFAULT_CHUNK
    return threads, chunk, max(ctx.options.get("buffers") or DEFAULT_BUFFERS, threads)


def load(ctx: LoadContext) -> torch.nn.Module:
    threads, chunk, buffers = _shape(ctx)
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    entries, sections, total = layout(weight_files(ctx.checkpoint.folder))
    dest = torch.empty(total, dtype=torch.uint8, device=ctx.device)
    read_into(dest, sections, threads, chunk, buffers)
    ring = f", {buffers} pinned buffers" if ctx.device.type == "cuda" else ", straight into memory"
    ctx.io_mode = f"buffered preadv (page cache), {threads} threads, {chunk >> 20} MiB chunks{ring}"
    ctx.info.update(threads=threads, chunk_bytes=chunk, buffers=buffers, allocation_bytes=total)
    return assign(model, tensors(dest, entries), ctx.device)



# --- tensor parallel (TP_SIZE>1) ------------------------------------------------------------
ALIGN = 256


Section = tuple[str, int, int, int]  # (path, file offset, allocation offset, bytes)
Placed = tuple[str, torch.dtype, tuple[int, ...], int, int]  # (name, dtype, shape, offset, bytes)


def _rank_sections(entries: list[Entry], sections: list[Section], plan: TPPlan
                   ) -> tuple[list[Section], list[Placed], int, list[Section], list[tuple[Entry, int]], int]:
    """Byte ranges this rank reads. A slice on dim 0 (or after leading dims of size 1) is one
    range of the file; any other split is strided, so the whole tensor is read into a scratch
    allocation and narrowed on the device."""
    import bisect
    bases = [s[2] for s in sections]
    direct, placed, dtotal = [], [], 0
    strided, scattered, stotal = [], [], 0
    for e in entries:
        path, data_start, base, _ = sections[bisect.bisect_right(bases, e.start) - 1]
        foff = data_start + (e.start - base)
        b = plan.bounds(e.name, e.shape)
        dim = plan.dims.get(e.name) or 0  # b is None where dim is None
        if b is not None and any(n != 1 for n in e.shape[:dim]):
            strided.append((path, foff, stotal, e.nbytes))
            scattered.append((e, stotal))
            stotal += e.nbytes + (-e.nbytes) % ALIGN
            continue
        shape, nbytes = e.shape, e.nbytes
        if b is not None:
            inner = e.nbytes // max(1, e.shape[dim]) if e.shape[dim] else 0
            shape = e.shape[:dim] + (b[1],) + e.shape[dim + 1:]
            foff, nbytes = foff + b[0] * inner, b[1] * inner
        direct.append((path, foff, dtotal, nbytes))
        placed.append((e.name, e.dtype, shape, dtotal, nbytes))
        dtotal += nbytes + (-nbytes) % ALIGN
    return direct, placed, dtotal, strided, scattered, stotal


def load_tp(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    """Tensor parallel: only this rank's byte ranges, through the same reader pipeline."""
    threads, chunk, buffers = _shape(ctx)
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    entries, sections, _ = layout(weight_files(ctx.checkpoint.folder))
    direct, placed, dtotal, strided, scattered, stotal = _rank_sections(entries, sections, plan)
    state: dict[str, torch.Tensor] = {}
    if strided:
        scratch = torch.empty(stotal, dtype=torch.uint8, device=ctx.device)
        read_into(scratch, [s for s in strided if s[3]], threads, chunk, buffers)
        for e, off in scattered:
            whole = scratch[off:off + e.nbytes].view(e.dtype).view(e.shape)
            state[e.name] = plan.narrow(e.name, whole).contiguous()
        del scratch
    dest = torch.empty(max(dtotal, 1), dtype=torch.uint8, device=ctx.device)
    read_into(dest, [s for s in direct if s[3]], threads, chunk, buffers)
    for name, dtype, shape, off, nbytes in placed:
        state[name] = dest[off:off + nbytes].view(dtype).view(shape)
    ring = f", {buffers} pinned buffers" if ctx.device.type == "cuda" else ", straight into memory"
    extra = sum(e.nbytes for e, _ in scattered)
    ctx.io_mode = (f"buffered preadv (page cache) of the rank's byte ranges, {threads} threads, "
                   f"{chunk >> 20} MiB chunks{ring}; strided (rowwise) slices: whole tensor read, then "
                   f"narrowed on the device")
    ctx.info.update(threads=threads, chunk_bytes=chunk, buffers=buffers, allocation_bytes=dtotal,
                    strided_tensors=len(scattered), strided_read_bytes=extra,
                    bytes_read=sum(s[3] for s in direct) + extra)
    return plan.assign(model, state, ctx.device)
