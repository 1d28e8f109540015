"""reference: loadbench's own instrument for what this machine achieves end to end.

Not a product, and not tuned for any one machine: a plain pipeline anyone can
read in a minute. Reader threads fill a ring of pinned host buffers with the
safetensors data sections, in fixed chunks (`preadv` from local files, ranged
GETs from object storage); each chunk is copied on the thread's own CUDA
stream into one device allocation; every tensor is a view of that allocation,
placed by the safetensors header. Pinning the ring is inside the timed region
(it costs ~0.5 s per GiB), so the ring stays small. On a CPU device the chunks
are read straight into the destination.

With tensor parallelism a rank reads only its own bytes: a slice on the first
dim is one range of the file, any other split is read as one span per row
(`rows` spans of `slice bytes`, a row's stride apart), gathered into the ring
buffer so each chunk is still one host-to-device copy.

The gap between this loader and the component ceilings is what no loader
can be blamed for; the gap between a library and this loader is what that
library leaves on the table.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

from loadbench import cpus, models
from loadbench.loaders.context import LoadContext, Remote, TPPlan
from loadbench.loaders.safetensors_lib import assign, weight_files
from loadbench.storage import s3direct

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
# From files, InstantTensor's shape, which beat the earlier 8 x 32 MiB into a 512 MiB
# cudaHostAlloc ring by 28% warm on an H200 (0.491 s, n = 6, against 0.685 s, n = 3;
# docs/results/2026-12-03-h200-llama-2-7b-fidelity-nodecache): 8 MiB reads, a thread per usable
# CPU but 4 (at most 12, at least 4), two registered buffers a thread. Each reader registers its
# own buffers (`slots`): 0.454 s against 0.533 s for one up-front registration, n = 15 each,
# interleaved with InstantTensor's 0.373 s (docs/results/2026-12-04-h200-llama-2-7b-reference-ring).
DEFAULT_CHUNK, BUFFERS_PER_THREAD, MAX_FILE_THREADS, MIN_FILE_THREADS = 8 << 20, 2, 12, 4
DEFAULT_PIN = "slots"
ALIGN = 256


def file_threads() -> int:
    """Readers from files: page-cache copies are CPU work, so one a usable CPU, leaving 4 for
    the copies' submission and the rest of the process, as InstantTensor does (cpu_count - 4).
    At least 4 all the same: a pod with 4 to 8 CPUs gets 4 readers and no spare CPU."""
    return max(MIN_FILE_THREADS, min(MAX_FILE_THREADS, cpus.usable() - 4))


Section = tuple[str, int, int, int]  # (source, file offset, allocation offset, bytes)
# One unit of work: (source, spans [(file offset, bytes), ...] that land back to back, allocation
# offset, bytes). A source is a local path or an object's name; a reader fills a buffer from it.
Item = tuple[str, tuple[tuple[int, int], ...], int, int]
Reader = Callable[[str, tuple[tuple[int, int], ...], memoryview], None]


def import_package() -> None:
    return None  # needs nothing beyond torch


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # offset in the device allocation
    nbytes: int


def _local_header(path: str) -> tuple[dict[str, Any], int, int]:
    """(header, data start, data bytes) of a local safetensors file."""
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
    return header, 8 + hlen, os.path.getsize(path) - 8 - hlen


def layout(paths: list[str], header: Callable[[str], tuple[dict[str, Any], int, int]] = _local_header
           ) -> tuple[list[Entry], list[Section], int]:
    """(tensors, file sections, total bytes) of the files, every file's data aligned."""
    entries: list[Entry] = []
    sections: list[Section] = []
    base = 0
    for path in paths:
        head, data_start, size = header(path)
        head.pop("__metadata__", None)
        sections.append((path, data_start, base, size))
        for name, meta in head.items():
            begin, end = meta["data_offsets"]
            entries.append(Entry(name, DTYPES[meta["dtype"]], tuple(meta["shape"]), base + begin,
                                 end - begin))
        base += size + (-size) % ALIGN
    return entries, sections, base


def _chunks(sections: list[Section], chunk: int) -> list[Item]:
    return [(path, ((foff + o, min(chunk, size - o)),), doff + o, min(chunk, size - o))
            for path, foff, doff, size in sections for o in range(0, size, chunk)]


def _row_chunks(path: str, start: int, doff: int, seg: int, rows: int, stride: int, chunk: int
                ) -> list[Item]:
    """`rows` spans of `seg` bytes, `stride` apart from file offset `start`, landing back to back
    at `doff`: as few items as fit a chunk each (a row longer than a chunk is split)."""
    out: list[Item] = []
    if seg > chunk:
        for r in range(rows):
            for o in range(0, seg, chunk):
                n = min(chunk, seg - o)
                out.append((path, ((start + r * stride + o, n),), doff + r * seg + o, n))
        return out
    per = max(1, chunk // seg)
    for r0 in range(0, rows, per):
        k = min(per, rows - r0)
        spans = tuple((start + (r0 + r) * stride, seg) for r in range(k))
        out.append((path, spans, doff + r0 * seg, k * seg))
    return out


def _read_all(fd: int, view: memoryview, offset: int, need: int | None = None) -> None:
    """Fill `view` from `offset`, or its first `need` bytes at least: with O_DIRECT the view
    covers whole pages and the file may end before the last one does (that read comes back
    short)."""
    done, need = 0, len(view) if need is None else need
    while done < need:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"short read at offset {offset + done}")
        done += n


def _host_bytes(t: torch.Tensor) -> memoryview:
    """A writable view of a host uint8 tensor's memory."""
    array: Any = t.numpy()  # numpy declares the buffer protocol to mypy only for Python >= 3.12
    return memoryview(array)


PAGE = 4096
PINS = ("alloc", "register", "slots")


def _cuda(call: str, *args: int) -> None:
    code = int(getattr(torch.cuda.cudart(), call)(*args))
    if code != 0:
        raise RuntimeError(f"{call} of the reference's staging ring failed (cudaError {code}); "
                           f"REF_PIN=alloc pins with cudaHostAlloc instead")


class HostRing:
    """The pinned staging buffers, one host allocation for every reader thread:
    `alloc` asks torch for pinned memory (cudaHostAlloc through its caching host allocator);
    `register` page-locks an ordinary page-aligned allocation with cudaHostRegister before any
    read, as InstantTensor does (its source says that is faster); `slots` maps anonymous memory
    advised for huge pages and lets each reader register its own buffers when it starts, so the
    page faults and the pinning are spread over the readers and overlap the first reads instead
    of preceding them all (on an H200 the up-front `register` of 192 MiB took 0.06-0.09 s of a
    0.41-0.47 s warm load). Either way the pinning, and the unregistering after the load, is
    inside the timed load, as it is for any library, and its time is recorded (`ring_s`, split
    into `register_s` and `unregister_s`; for `slots`, the slowest reader's registering). A later
    load in the same process gets torch's cached pinned memory back with `alloc`, not with the
    others: only first-in-process loads compare them."""

    def __init__(self, slots: int, size: int, pin: str) -> None:
        if pin not in PINS:
            raise ValueError(f"pin {pin!r}: one of {', '.join(PINS)}")
        start = time.perf_counter()
        self.pin, self.size, self.nbytes = pin, size, slots * size
        self._registered: list[int] = []
        self._lock = threading.Lock()
        self.register_s = self.unregister_s = 0.0
        if pin == "slots":
            area = mmap.mmap(-1, self.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            try:  # fewer pages to fault in and to pin; a kernel without THP says EINVAL
                area.madvise(mmap.MADV_HUGEPAGE)
            except (AttributeError, OSError):
                pass
            # The tensor holds the mmap object, which keeps the mapping; nothing may close `area`.
            self.host = torch.frombuffer(area, dtype=torch.uint8)
        elif pin == "register":
            raw = torch.empty(self.nbytes + PAGE, dtype=torch.uint8)
            at = (-raw.data_ptr()) % PAGE
            self.host = raw[at:at + self.nbytes]
            self._register(0, self.nbytes)
        else:
            self.host = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=True)
        self.seconds = time.perf_counter() - start

    def _register(self, offset: int, nbytes: int) -> None:
        start = time.perf_counter()
        _cuda("cudaHostRegister", self.host.data_ptr() + offset, nbytes, 0)
        with self._lock:
            self._registered.append(self.host.data_ptr() + offset)
            self.register_s = max(self.register_s, time.perf_counter() - start)

    def slot(self, i: int) -> torch.Tensor:
        return self.host[i * self.size:(i + 1) * self.size]

    def claim(self, first: int, count: int) -> None:
        """A reader's own slots, pinned by that reader before its first copy (`slots` only)."""
        if self.pin == "slots":
            self._register(first * self.size, count * self.size)

    def close(self) -> None:
        """After every copy out of the ring has finished. Every range is unregistered even if one
        fails (one error is raised after, naming how many failed)."""
        start = time.perf_counter()
        with self._lock:
            ptrs, self._registered = self._registered, []
        failed: list[RuntimeError] = []
        for ptr in ptrs:
            try:
                _cuda("cudaHostUnregister", ptr)
            except RuntimeError as e:
                failed.append(e)
        self.unregister_s = time.perf_counter() - start
        self.seconds += self.unregister_s + (self.register_s if self.pin == "slots" else 0.0)
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(ptrs)} ranges of the ring: {failed[0]}")


def pipeline(dest: torch.Tensor, items: list[Item], read: Reader, threads: int, buffers: int,
             pin: str = "alloc", stop: threading.Event | None = None) -> dict[str, Any]:
    """Fill `dest` (uint8, on any device) with the items' bytes: `threads` readers, each with its
    own share of one pinned ring and its own CUDA stream. Returns what the ring cost. `stop`,
    when set by another thread, ends the readers after their current item."""
    items = [item for item in items if item[3]]
    if stop is not None and stop.is_set():
        raise RuntimeError("the reads were stopped before they began")
    if not items:
        return {}
    work: queue.SimpleQueue = queue.SimpleQueue()
    for item in items:
        work.put(item)
    size = -(-max(item[3] for item in items) // PAGE) * PAGE  # every slot starts on a page
    errors: list[BaseException] = []
    cuda = dest.device.type == "cuda"
    threads = min(threads, len(items))
    per_thread = max(1, min(buffers // threads, -(-len(items) // threads)))  # no slot left unused
    started = time.perf_counter()  # the ring's building inside, whichever way it is pinned
    ring = HostRing(per_thread * threads, size, pin) if cuda else None

    spent = [[0.0, 0.0, 0.0] for _ in range(threads)]  # per reader: waiting, reading, submitting

    def worker(t: int) -> None:
        stream = None
        mine_spent = spent[t]
        try:
            if ring is not None:
                torch.cuda.set_device(dest.device)  # a new thread is on device 0: no context there
                stream = torch.cuda.Stream(device=dest.device)
                stream.wait_stream(torch.cuda.current_stream(dest.device))  # dest is allocated
                # The current stream is per thread: set once, not a stream context per chunk, and
                # one event a buffer, recorded again each time, not a new one per chunk. The
                # submission runs under the GIL that every reader needs (0.08-0.11 s a reader of a
                # 0.5 s warm load on an H200, docs/results/2026-12-04-h200-llama-2-7b-cold-n5).
                torch.cuda.set_stream(stream)
                ring.claim(t * per_thread, per_thread)  # `slots`: this reader pins its own buffers
                mine = [ring.slot(t * per_thread + j) for j in range(per_thread)]
                events = [torch.cuda.Event() for _ in range(per_thread)]
                i = 0
            while not errors and not (stop is not None and stop.is_set()):
                try:
                    src, spans, doff, n = work.get_nowait()
                except queue.Empty:
                    break
                if ring is None:
                    t0 = time.perf_counter()
                    read(src, spans, _host_bytes(dest[doff:doff + n]))
                    mine_spent[1] += time.perf_counter() - t0
                    continue
                slot = i % per_thread
                t0 = time.perf_counter()
                events[slot].synchronize()  # the copy out of this buffer is done (none yet: at once)
                buf = mine[slot][:n]
                t1 = time.perf_counter()
                read(src, spans, _host_bytes(buf))
                t2 = time.perf_counter()
                dest[doff:doff + n].copy_(buf, non_blocking=True)
                events[slot].record(stream)
                i += 1
                mine_spent[0] += t1 - t0
                mine_spent[1] += t2 - t1
                mine_spent[2] += time.perf_counter() - t2
        except BaseException as e:  # reported to the caller
            errors.append(e)
        finally:
            if stream is not None:
                t0 = time.perf_counter()
                stream.synchronize()  # no copy into dest is in flight when the caller returns
                mine_spent[0] += time.perf_counter() - t0

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    try:
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    finally:
        if any(th.is_alive() for th in pool):  # a signal (Terminated) or a failed start
            errors.append(RuntimeError("the load was stopped"))  # each stops after its item
            for th in pool:
                if th.ident is not None:
                    th.join(timeout=60)
        # the ring is unpinned only when no thread can still be copying out of it
        if ring is not None and not any(th.is_alive() for th in pool):
            try:
                ring.close()
            except RuntimeError as e:
                if not errors:
                    raise
                errors.append(e)  # the readers' error is the one to report
    if errors:
        raise errors[0]
    if stop is not None and stop.is_set() and not work.empty():
        raise RuntimeError("the reads were stopped before every item was read")
    # Where the readers' time went, summed over them, beside the pipeline's wall time: a reader
    # that mostly waits on its buffers' copies is bound by the copies, one that mostly reads by
    # the reads (the page cache, the disk, the network).
    stages = {"pipeline_s": time.perf_counter() - started, "readers": threads,
              "readers_wait_s": sum(x[0] for x in spent), "readers_read_s": sum(x[1] for x in spent),
              "readers_submit_s": sum(x[2] for x in spent)}
    if ring is None:
        return stages
    return {"ring_s": ring.seconds, "register_s": ring.register_s, "unregister_s": ring.unregister_s,
            "ring_bytes": ring.nbytes, "pin": pin, **stages}


class LocalFiles:
    """Spans read with preadv from local files, one descriptor per file, closed on exit.
    `direct`: opened with O_DIRECT, as fastsafetensors and InstantTensor read by default. O_DIRECT
    needs page-aligned file offsets, lengths and memory, and a safetensors data section starts
    anywhere, so each span is read as the pages that cover it into the thread's own aligned
    scratch buffer and copied out (a memory copy, inside the timed load, that a disk-bound cold
    load has time for)."""

    def __init__(self, paths: list[str], direct: bool = False) -> None:
        self.paths, self.direct = paths, direct

    def __enter__(self) -> Reader:
        flags = os.O_RDONLY | (os.O_DIRECT if self.direct else 0)
        self.fds = {path: os.open(path, flags) for path in dict.fromkeys(self.paths)}

        def read(src: str, spans: tuple[tuple[int, int], ...], view: memoryview) -> None:
            pos = 0
            for off, n in spans:
                _read_all(self.fds[src], view[pos:pos + n], off)
                pos += n

        scratch = threading.local()

        def read_direct(src: str, spans: tuple[tuple[int, int], ...], view: memoryview) -> None:
            pos = 0
            for off, n in spans:
                start = off - off % PAGE
                lead = off - start
                length = -(-(lead + n) // PAGE) * PAGE
                buf = getattr(scratch, "buf", None)
                if buf is None or len(buf) < length:  # page-aligned, as O_DIRECT needs
                    buf = scratch.buf = mmap.mmap(-1, length)
                pages = memoryview(buf)[:length]
                _read_all(self.fds[src], pages, start, lead + n)
                view[pos:pos + n] = pages[lead:lead + n]
                pos += n
        return read_direct if self.direct else read

    def __exit__(self, *exc: Any) -> None:
        for fd in self.fds.values():
            os.close(fd)


def read_into(dest: torch.Tensor, sections: list[Section], threads: int, chunk: int,
              buffers: int, pin: str = "alloc", direct: bool = False,
              stop: threading.Event | None = None) -> dict[str, Any]:
    """Fill `dest` (uint8, on any device) with the local sections' bytes."""
    with LocalFiles([s[0] for s in sections], direct) as read:
        return pipeline(dest, _chunks(sections, chunk), read, threads, buffers, pin, stop)


def _destination(ctx: LoadContext, nbytes: int) -> torch.Tensor:
    """The one device allocation every tensor is a view of. A first load in a process pays the
    allocator's cudaMalloc of the whole model here; its time is recorded (`allocation_s`)."""
    start = time.perf_counter()
    dest = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=ctx.device)
    ctx.info["allocation_s"] = time.perf_counter() - start
    return dest


def tensors(dest: torch.Tensor, entries: list[Entry]) -> dict[str, torch.Tensor]:
    return {e.name: dest[e.start:e.start + e.nbytes].view(e.dtype).view(e.shape) for e in entries}


def _shape(ctx: LoadContext, threads: int | None = None, chunk: int = DEFAULT_CHUNK,
           per_thread: int = BUFFERS_PER_THREAD) -> tuple[int, int, int, str]:
    """(threads, chunk bytes, ring buffers, pinning) from the options, else the defaults given
    (threads: file_threads()); the ring has at least a buffer per thread, `per_thread` by default."""
    threads = ctx.options.get("threads") or threads or file_threads()
    chunk = ctx.options.get("chunk_bytes") or chunk
    return (threads, chunk, max(ctx.options.get("buffers") or per_thread * threads, threads),
            (ctx.options.get("pin") or DEFAULT_PIN).lower())


def _how(direct: bool) -> str:
    return "O_DIRECT preadv (skips the page cache)" if direct else "buffered preadv (page cache)"


def _ring(ctx: LoadContext, buffers: int, pin: str) -> str:
    how = {"register": "cudaHostRegister", "slots": "cudaHostRegister by each reader, huge pages"
           }.get(pin, "cudaHostAlloc")
    return (f", {buffers} pinned buffers ({how})" if ctx.device.type == "cuda"
            else ", straight into memory")


T = TypeVar("T")


def _skeleton_and(ctx: LoadContext, reads: Callable[[threading.Event | None], T]
                  ) -> tuple[torch.nn.Module, T]:
    """The skeleton, then `reads` (the layout, the allocation and the pipeline); with
    REF_OVERLAP=1 the reads start first, in a thread of their own, and the skeleton is built
    while they run: its 0.03 s (llama-2-7b on an H200) is a tenth of a warm load, and nothing in
    it needs the weights. The skeleton mark then falls inside the reads (`reads_lead_s` says by
    how much), so weights_s no longer holds every read. If the skeleton fails, or a signal ends
    the wait, the readers are stopped after their current item, joined (the ring unpinned
    after its last copy), and the main thread's error is raised.

    While the skeleton is built, transformers sets the default dtype and patches parameter
    registration process-wide: the reads must keep giving every tensor an explicit dtype and
    build no modules."""
    if not ctx.options.get("overlap"):
        model = models.skeleton(ctx.config, ctx.dtype)
        ctx.mark("skeleton")
        return model, reads(None)
    ctx.config  # noqa: B018  the config file read before the readers start, not beside them
    stop = threading.Event()
    result: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            if ctx.device.type == "cuda":  # a new thread is on device 0: the ring's pinning
                torch.cuda.set_device(ctx.device)  # (cudaHostRegister) must be in this one's context
            result.append(reads(stop))
        except BaseException as e:  # given to the caller below
            failed.append(e)
    thread = threading.Thread(target=run, name="reference-reads", daemon=True)
    started = time.perf_counter()
    try:
        thread.start()
        model = models.skeleton(ctx.config, ctx.dtype)
        ctx.mark("skeleton")
        thread.join()
    except BaseException as e:  # the skeleton's error, or a signal (Terminated) during the wait
        stop.set()
        thread.join()
        if failed:
            e.add_note(f"the reads, stopped, said: {failed[0]!r}")
        raise
    if failed:
        raise failed[0]
    ctx.info.update(overlap=True, reads_lead_s=ctx.marks["skeleton"] - started)
    return model, result[0]


def _overlap_mode(ctx: LoadContext) -> str:
    return ", skeleton built while the reads run" if ctx.options.get("overlap") else ""


def load(ctx: LoadContext) -> torch.nn.Module:
    threads, chunk, buffers, pin = _shape(ctx)
    direct = bool(ctx.options.get("direct"))

    def reads(stop: threading.Event | None) -> tuple[list[Entry], torch.Tensor, int]:
        entries, sections, total = layout(weight_files(ctx.checkpoint.folder))
        dest = _destination(ctx, total)
        ctx.info.update(read_into(dest, sections, threads, chunk, buffers, pin, direct, stop))
        return entries, dest, total
    model, (entries, dest, total) = _skeleton_and(ctx, reads)
    ctx.io_mode = (f"{_how(direct)}, {threads} threads, {chunk >> 20} MiB chunks"
                   f"{_ring(ctx, buffers, pin)}{_overlap_mode(ctx)}")
    ctx.info.update(threads=threads, chunk_bytes=chunk, buffers=buffers, allocation_bytes=total)
    return assign(model, tensors(dest, entries), ctx.device)


# --- object storage (MODEL_URI, S3_CACHE=none) ---------------------------------------------------

class Objects:
    """Ranged GETs of one object-storage folder (ctx.remote): the reader of the pipeline and the
    safetensors headers. The spans of an item (a rank's rows of a strided slice) are read by
    GETs of the ranges that cover them, at most part_bytes each, the rows gathered from them: a
    GET per row would cost a request per few KB. `fetched` counts the bytes asked of the
    server, the covered gaps too."""

    def __init__(self, remote: Remote) -> None:
        self.remote, self.sizes = remote, dict(remote.objects)
        self.lock = threading.Lock()
        self.fetched = self.requests = 0
        self.scratch = threading.local()  # one growing buffer a thread for covering GETs

    def _get(self, name: str, offset: int, into: Any) -> None:
        from loadbench.storage import objectstore
        n = len(memoryview(into))
        objectstore.read_ranges(self.remote.object(name), [(offset, n)], [into], concurrency=1,
                                s3=self.remote.client)
        with self.lock:
            self.fetched += n
            self.requests += 1

    def read(self, src: str, spans: tuple[tuple[int, int], ...], view: memoryview) -> None:
        """Spans in file order, back to back into `view`: consecutive spans are grouped into
        GETs of at most part_bytes each (a span longer than that is a GET of its own)."""
        if len(spans) == 1:
            self._get(src, spans[0][0], view[:spans[0][1]])
            return
        limit, pos, i = self.remote.part_bytes, 0, 0
        while i < len(spans):
            first, j = spans[i][0], i + 1
            while j < len(spans) and spans[j][0] + spans[j][1] - first <= limit:
                j += 1
            end = spans[j - 1][0] + spans[j - 1][1]
            buf = getattr(self.scratch, "buf", None)
            if buf is None or len(buf) < end - first:
                buf = self.scratch.buf = bytearray(end - first)
            cover = memoryview(buf)[:end - first]
            self._get(src, first, cover)
            for off, n in spans[i:j]:
                view[pos:pos + n] = cover[off - first:off - first + n]
                pos += n
            i = j

    def header(self, name: str) -> tuple[dict[str, Any], int, int]:
        head = bytearray(8)
        self._get(name, 0, head)
        (hlen,) = struct.unpack("<Q", head)
        body = bytearray(hlen)
        self._get(name, 8, body)
        return json.loads(body), 8 + hlen, self.sizes[name] - 8 - hlen

    def names(self) -> list[str]:
        return [name for name, _ in self.remote.objects if name.endswith(".safetensors")]


def _remote(ctx: LoadContext) -> tuple[Remote, tuple[int, int, int, str]]:
    """(remote, its _shape): as many GETs in flight as the client's pool holds, ranges of
    S3_PART_BYTES (as the GET ceiling measures), unless the options say; a buffer a request
    (the network, not the copy, is what a second one would wait for; 16 x 64 MiB is 1 GiB,
    registered by each reader unless REF_PIN says otherwise, as from files)."""
    if ctx.remote is None:
        raise ValueError("the reference's object-storage loads need ctx.remote (a MODEL_URI source)")
    return ctx.remote, _shape(ctx, ctx.remote.concurrency, ctx.remote.part_bytes, per_thread=1)


def load_s3(ctx: LoadContext) -> torch.nn.Module:
    """Parallel ranged GETs of the chunks straight into the pinned ring, copied to the device:
    what this network and server allow end to end, nothing written to local storage."""
    remote, (threads, chunk, buffers, pin) = _remote(ctx)
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    objects = Objects(remote)
    entries, sections, total = layout(objects.names(), objects.header)
    dest = _destination(ctx, total)
    ctx.info.update(pipeline(dest, _chunks(sections, chunk), objects.read, threads, buffers, pin))
    ctx.io_mode = (f"ranged GETs from {remote.describe()} ({s3direct.kind(remote.client)}), {threads} in "
                   f"flight, {chunk >> 20} MiB ranges{_ring(ctx, buffers, pin)}")
    ctx.info.update(threads=threads, chunk_bytes=chunk, buffers=buffers, allocation_bytes=total,
                    requests=objects.requests, bytes_fetched=objects.fetched)
    return assign(model, tensors(dest, entries), ctx.device)


# --- tensor parallel (TP_SIZE>1) ------------------------------------------------------------
Placed = tuple[str, torch.dtype, tuple[int, ...], int, int]  # (name, dtype, shape, offset, bytes)


def rank_items(entries: list[Entry], sections: list[Section], plan: TPPlan, chunk: int
               ) -> tuple[list[Item], list[Placed], int, int]:
    """(work items, where each tensor lands, allocation bytes, tensors read as rows) for this
    rank: only its bytes. A split on dim d of a tensor whose leading dims hold R > 1 rows is R
    spans of (length on d) x (bytes per step of d), a row (size of d x that) apart."""
    import bisect
    bases = [s[2] for s in sections]
    items: list[Item] = []
    placed: list[Placed] = []
    total = strided = 0
    for e in entries:
        path, data_start, base, _ = sections[bisect.bisect_right(bases, e.start) - 1]
        foff = data_start + (e.start - base)
        b = plan.bounds(e.name, e.shape)
        shape, rows, seg, stride = e.shape, 1, e.nbytes, e.nbytes
        if b is not None:
            dim = plan.dims.get(e.name) or 0
            rows = math.prod(e.shape[:dim])
            step = e.nbytes // max(1, rows * e.shape[dim]) if e.shape[dim] else 0
            shape = e.shape[:dim] + (b[1],) + e.shape[dim + 1:]
            foff, seg, stride = foff + b[0] * step, b[1] * step, e.shape[dim] * step
        nbytes = rows * seg
        if nbytes:  # one row is one range of the file, cut into chunks like any section
            items += _row_chunks(path, foff, total, seg, rows, stride, chunk)
            strided += rows > 1
        placed.append((e.name, e.dtype, shape, total, nbytes))
        total += nbytes + (-nbytes) % ALIGN
    return items, placed, total, strided


def _rank_state(ctx: LoadContext, plan: TPPlan, names: list[str],
                header: Callable[[str], tuple[dict[str, Any], int, int]], read: Reader,
                how: tuple[int, int, int, str], stop: threading.Event | None = None
                ) -> dict[str, torch.Tensor]:
    """This rank's tensors, read through the pipeline as views of one device allocation, and
    what the read did in ctx.info: the part both TP loads share, whatever the reader."""
    threads, chunk, buffers, pin = how
    entries, sections, _ = layout(names, header)
    items, placed, total, strided = rank_items(entries, sections, plan, chunk)
    dest = _destination(ctx, total)
    ctx.info.update(pipeline(dest, items, read, threads, buffers, pin, stop))
    ctx.info.update(threads=threads, chunk_bytes=chunk, buffers=buffers, allocation_bytes=total,
                    strided_tensors=strided, row_spans=sum(len(i[1]) for i in items if len(i[1]) > 1),
                    bytes_read=sum(i[3] for i in items))
    return {name: dest[off:off + n].view(dtype).view(shape) for name, dtype, shape, off, n in placed}


def load_tp(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    """Tensor parallel: only this rank's byte ranges, through the same reader pipeline."""
    threads, chunk, buffers, pin = how = _shape(ctx)
    paths = weight_files(ctx.checkpoint.folder)
    direct = bool(ctx.options.get("direct"))

    def reads(stop: threading.Event | None) -> dict[str, torch.Tensor]:
        with LocalFiles(paths, direct) as read:
            return _rank_state(ctx, plan, paths, _local_header, read, how, stop)
    model, state = _skeleton_and(ctx, reads)
    ctx.io_mode = (f"{_how(direct)} of the rank's bytes only, {threads} threads, "
                   f"{chunk >> 20} MiB chunks{_ring(ctx, buffers, pin)}; strided (rowwise) slices read "
                   f"as one span per row{_overlap_mode(ctx)}")
    return plan.assign(model, state, ctx.device)


def load_tp_s3(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    """Tensor parallel from object storage: only this rank's byte ranges, as ranged GETs; the
    rows of a strided slice come from covering GETs of at most a part each (the gaps between
    them are fetched too, and counted in bytes_fetched)."""
    remote, how = _remote(ctx)
    threads, chunk, buffers, pin = how
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    objects = Objects(remote)
    state = _rank_state(ctx, plan, objects.names(), objects.header, objects.read, how)
    ctx.io_mode = (f"ranged GETs from {remote.describe()} of the rank's bytes only, {threads} in "
                   f"flight, {chunk >> 20} MiB ranges{_ring(ctx, buffers, pin)}; strided (rowwise) slices "
                   f"as covering GETs of at most a range each")
    ctx.info.update(bytes_fetched=objects.fetched, requests=objects.requests)
    return plan.assign(model, state, ctx.device)
