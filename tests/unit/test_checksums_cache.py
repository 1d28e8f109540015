import os

import pytest
import torch

from loadbench.measure import checksums
from loadbench.storage import cache

MASK = (1 << 64) - 1


def reference(data: bytes) -> str:
    """The documented checksum, computed in plain Python."""
    body = len(data) // 4 * 4
    words = [int.from_bytes(data[i:i + 4], "little", signed=True) for i in range(0, body, 4)]
    words += list(data[body:])  # the tail: unsigned single bytes
    s1 = sum(words) & MASK
    s2 = sum((i + 1) * w for i, w in enumerate(words)) & MASK
    return f"{s1:016x}{s2:016x}"


def test_checksum_matches_the_documented_formula_including_wraparound():
    t = torch.tensor([2**31 - 1, -(2**31), 123456789, -7] * 1000, dtype=torch.int32)
    assert checksums.tensor_checksum(t) == reference(t.numpy().tobytes())
    odd = torch.randn(7, dtype=torch.float16)  # 14 bytes: a 2-byte tail
    assert checksums.tensor_checksum(odd) == reference(odd.numpy().tobytes())


def test_one_flipped_bit_and_swapped_words_are_detected():
    t = torch.randn(4096, dtype=torch.float16)
    base = checksums.tensor_checksum(t)
    flipped = t.clone()
    flipped.view(torch.int16)[100] ^= 1
    assert checksums.tensor_checksum(flipped) != base
    swapped = t.clone().view(torch.int32)
    swapped[[3, 4]] = swapped[[4, 3]]
    assert checksums.tensor_checksum(swapped.view(torch.float16)) != base


def test_verify_reports_each_kind_of_mismatch():
    state = {"a": torch.ones(4), "b": torch.zeros(3)}
    manifest = checksums.state_checksums(state)
    verified, mismatches = checksums.verify(state, manifest, torch.device("cpu"))
    assert (verified, mismatches) == (2, [])
    bad = {"a": torch.ones(4) * 2, "c": torch.zeros(1)}
    verified, mismatches = checksums.verify(bad, manifest, torch.device("cpu"))
    problems = {m["tensor"]: m["problem"] for m in mismatches}
    assert verified == 0
    assert "checksum differs" in problems["a"]
    assert "missing" in problems["b"] and "not in the manifest" in problems["c"]


def test_evict_and_warm_change_measured_residency(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(8 << 20))
    files = [str(path)]
    assert cache.prepare("warm", files) == 1.0
    cold = cache.prepare("cold", files)
    # Where the filesystem ignores the advice, the check must say so rather than pretend.
    assert cold <= cache.COLD_LIMIT or "ignore posix_fadvise" in cache.check("cold", cold)
    assert cache.check("warm", 1.0) is None


def test_the_reference_loader_places_every_tensor_from_the_safetensors_header(tmp_path):
    """Its layout parser against safetensors' own writer: shards, dtypes, alignment."""
    from safetensors.torch import save_file

    from loadbench.loaders import reference_lib
    a = {"w": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64)}
    b = {"x": torch.randn(4, dtype=torch.float32), "y": torch.ones(2, 2, dtype=torch.float16)}
    paths = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    save_file(a, paths[0])
    save_file(b, paths[1])
    entries, sections, total = reference_lib.layout(paths)
    dest = torch.empty(total, dtype=torch.uint8)
    reference_lib.read_into(dest, sections, threads=3, chunk=16, buffers=3)  # tiny chunks: many reads
    got = reference_lib.tensors(dest, entries)
    for name, want in {**a, **b}.items():
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name


@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_reference_reads_only_each_ranks_bytes_rows_included(tmp_path, world):
    """Splits on the first dim (one range), on inner dims (one span per row) and 3-D tensors,
    with tiny chunks so rows are grouped and long rows split: every rank's tensors equal
    narrow() of the whole tensor, and the bytes it asks for are exactly its share."""
    from safetensors.torch import save_file

    from loadbench.loaders import reference_lib
    from loadbench.measure.tp_plan import RankPlan
    g = torch.Generator().manual_seed(world)
    whole = {"col": torch.randn(12, 7, generator=g).to(torch.bfloat16),
             "row": torch.randn(5, 24, generator=g),
             "cube": torch.randn(3, 8, 4, generator=g).to(torch.float16),
             "lead1": torch.randn(1, 12, 3, generator=g),
             "kept": torch.arange(9, dtype=torch.int64)}
    dims = {"col": 0, "row": 1, "cube": 1, "lead1": 1, "kept": None}
    paths = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    save_file({k: whole[k] for k in ("col", "row")}, paths[0])
    save_file({k: whole[k] for k in ("cube", "lead1", "kept")}, paths[1])
    entries, sections, _ = reference_lib.layout(paths)
    for rank in range(world):
        plan = RankPlan(rank, world, dims, {})
        items, placed, total, strided = reference_lib.rank_items(entries, sections, plan, chunk=40)
        assert strided == 2  # row and cube; lead1's only leading dim is 1, so its slice is one range
        dest = torch.empty(max(total, 1), dtype=torch.uint8)
        with reference_lib.LocalFiles(paths) as read:
            reference_lib.pipeline(dest, items, read, threads=3, buffers=3)
        share = 0
        for name, dtype, shape, off, n in placed:
            got = dest[off:off + n].view(dtype).view(shape)
            want = plan.narrow(name, whole[name])
            assert torch.equal(got, want), (name, rank)
            share += want.numel() * want.element_size()
        assert sum(i[3] for i in items) == share


def test_scoped_env_restores_exactly(monkeypatch):
    import os

    from loadbench.loaders.context import scoped_env
    monkeypatch.setenv("LB_KEEP", "1")
    monkeypatch.delenv("LB_GONE", raising=False)
    with scoped_env({"LB_KEEP": None, "LB_GONE": "x"}):
        assert "LB_KEEP" not in os.environ and os.environ["LB_GONE"] == "x"
    assert os.environ["LB_KEEP"] == "1" and "LB_GONE" not in os.environ


def test_usable_cpus_are_the_affinity_bounded_by_a_cgroup_quota(tmp_path):
    """A pod limited to 2.5 CPUs on a 16-core node has 3 to keep busy, not 16."""
    from loadbench import cpus
    mask = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("250000 100000\n")
    assert cpus.usable(str(quota)) == min(3, mask)
    quota.write_text("max 100000\n")
    assert cpus.usable(str(quota)) == mask
    quota.write_text("garbage\n")
    assert cpus.usable(str(quota)) == mask
    assert cpus.usable(str(tmp_path / "absent")) == mask


def test_the_reference_default_shape_is_instanttensors():
    """From files: 8 MiB reads, usable CPUs less 4 threads (4 to 12), two registered buffers a
    thread; an explicit setting wins, and the ring never has fewer buffers than threads."""
    from types import SimpleNamespace

    from loadbench import cpus
    from loadbench.loaders import reference_lib
    threads = reference_lib.file_threads()
    assert threads == max(4, min(12, cpus.usable() - 4))
    assert reference_lib._shape(SimpleNamespace(options={})) == (threads, 8 << 20, 2 * threads, "slots")
    set_ = SimpleNamespace(options={"threads": 3, "chunk_bytes": 1 << 20, "buffers": 2, "pin": "ALLOC"})
    assert reference_lib._shape(set_) == (3, 1 << 20, 3, "alloc")
    # from object storage the caller's defaults (S3_CONCURRENCY, S3_PART_BYTES) replace the files'
    assert reference_lib._shape(SimpleNamespace(options={}), 16, 64 << 20, per_thread=1) == (
        16, 64 << 20, 16, "slots")


def test_a_warm_trial_reads_back_only_the_pages_the_kernel_dropped(tmp_path):
    """Warming a mostly resident checkpoint reads not the whole of it again, only the missing runs."""
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(8 << 20))
    cache.evict([str(path)])  # written pages, once synced and dropped, come back by reads alone
    cache.warm([str(path)])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 1 << 20, 2 << 20, os.POSIX_FADV_DONTNEED)  # a hole in the middle
    finally:
        os.close(fd)
    runs = cache.missing(str(path))
    if not runs:
        pytest.skip("this filesystem ignores posix_fadvise(DONTNEED): no page to read back")
    assert all((1 << 20) <= off and off + n <= (3 << 20) for off, n in runs), runs
    assert cache.warm([str(path)]) == sum(n for _, n in runs) <= 2 << 20
    assert cache.missing(str(path)) == [] and cache.residency([str(path)]) == 1.0
    assert cache.warm([str(path)]) == 0  # nothing missing: nothing read


def test_the_references_pipeline_says_where_its_readers_spent_their_time(tmp_path):
    """A real safetensors file read by the reference's pipeline (into memory here): every byte
    lands where the header places it, and the document learns the pipeline's wall time and what
    its readers spent reading, waiting on copies and submitting them (none here: no ring)."""
    import torch
    from safetensors.torch import save_file

    from loadbench.loaders import reference_lib
    state = {f"w{i}": torch.arange(i * 1000, i * 1000 + 3000 + 7 * i, dtype=torch.int32) for i in range(5)}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    entries, sections, total = reference_lib.layout([str(path)])
    dest = torch.empty(total, dtype=torch.uint8)
    info = reference_lib.read_into(dest, sections, threads=3, chunk=4096, buffers=6)
    loaded = reference_lib.tensors(dest, entries)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert info["readers"] == 3 and info["pipeline_s"] > 0
    assert 0 < info["readers_read_s"] <= info["readers"] * info["pipeline_s"]
    assert info["readers_wait_s"] == info["readers_submit_s"] == 0
    assert "ring_s" not in info  # no pinned ring on the CPU


class _FakeCudart:
    """Stands in for the CUDA runtime this CPU machine lacks: records what is registered, fails
    the calls it is told to, as cudart does (a nonzero cudaError)."""

    def __init__(self, fail_register: int | None = None, fail_unregister: int | None = None) -> None:
        self.registered: dict[int, int] = {}
        self.calls = 0
        self.fail_register, self.fail_unregister = fail_register, fail_unregister

    def cudaHostRegister(self, ptr: int, nbytes: int, flags: int) -> int:
        self.calls += 1
        if self.calls == self.fail_register:
            return 2  # cudaErrorMemoryAllocation
        assert ptr not in self.registered
        self.registered[ptr] = nbytes
        return 0

    def cudaHostUnregister(self, ptr: int) -> int:
        if ptr == self.fail_unregister:
            return 1
        del self.registered[ptr]
        return 0


def test_each_reader_pins_its_own_disjoint_page_aligned_slots_and_all_are_released(monkeypatch):
    """REF_PIN=SLOTS: reader t registers its slots [t*k, (t+1)*k) itself; the ranges do not
    overlap, start on pages, cover the ring once; close() releases every one, even when one
    reader's registering failed or one release fails (every other range is still released)."""
    import threading

    import torch

    from loadbench.loaders import reference_lib
    size, readers, per = 3 * reference_lib.PAGE, 4, 2
    fake = _FakeCudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    ring = reference_lib.HostRing(readers * per, size, "slots")
    assert ring.host.data_ptr() % reference_lib.PAGE == 0 and not fake.registered  # nothing up front
    pool = [threading.Thread(target=ring.claim, args=(t * per, per)) for t in range(readers)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    spans = sorted(fake.registered.items())
    assert [p % reference_lib.PAGE for p, _ in spans] == [0] * readers
    assert [n for _, n in spans] == [per * size] * readers
    assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))  # back to back, no overlap
    assert spans[0][0] == ring.host.data_ptr() and ring.register_s > 0
    ring.close()
    assert fake.registered == {} and ring.unregister_s > 0 and ring.seconds >= ring.register_s

    fake = _FakeCudart(fail_register=2)  # the second reader's registering fails
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    ring = reference_lib.HostRing(readers * per, size, "slots")
    ring.claim(0, per)
    with pytest.raises(RuntimeError, match="cudaHostRegister of the reference's staging ring failed"):
        ring.claim(per, per)
    ring.claim(2 * per, per)
    ring.close()
    assert fake.registered == {}

    ring = reference_lib.HostRing(readers * per, size, "slots")
    for t in range(readers):
        ring.claim(t * per, per)
    fake.fail_unregister = ring.host.data_ptr()  # the first range cannot be released
    with pytest.raises(RuntimeError, match="1 of 4 ranges of the ring"):
        ring.close()
    assert list(fake.registered) == [ring.host.data_ptr()]  # the other three were


def test_the_up_front_ring_is_registered_whole_before_any_reader(monkeypatch):
    import torch

    from loadbench.loaders import reference_lib
    fake = _FakeCudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    ring = reference_lib.HostRing(6, 2 * reference_lib.PAGE, "register")
    assert fake.registered == {ring.host.data_ptr(): 12 * reference_lib.PAGE}
    ring.claim(0, 1)  # a no-op unless SLOTS
    assert len(fake.registered) == 1
    ring.close()
    assert fake.registered == {}


def test_o_direct_spans_read_the_same_bytes_as_buffered_ones(tmp_path):
    """O_DIRECT needs page-aligned offsets and lengths; the spans a load asks for are neither (a
    safetensors data section starts anywhere, a rank's rows are a few bytes apart). Each span is
    read as the pages covering it: the bytes are the buffered reader's, up to the file's last byte."""
    import os

    from loadbench.loaders import reference_lib
    path = tmp_path / "f.bin"
    data = os.urandom(5 * reference_lib.PAGE + 123)  # ends mid-page
    path.write_bytes(data)
    spans = ((7, 100), (4090, 10), (4096, 4096), (3 * 4096 + 5, 2 * 4096 + 118 - 5), (0, 1))
    total = sum(n for _, n in spans)
    try:
        with reference_lib.LocalFiles([str(path)], direct=True) as read:
            out = bytearray(total)
            read(str(path), spans, memoryview(out))
    except OSError as e:  # tmpfs and some overlays refuse O_DIRECT
        pytest.skip(f"O_DIRECT refused here: {e}")
    assert bytes(out) == b"".join(data[o:o + n] for o, n in spans)
    with reference_lib.LocalFiles([str(path)], direct=True) as read:
        with pytest.raises(OSError, match="short read"):  # past the end
            read(str(path), ((len(data) - 10, 20),), memoryview(bytearray(20)))


def test_the_machine_names_its_cpu_and_numa_nodes():
    from loadbench import machine
    info = machine.machine()
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    assert info["cpu_model"] == (names[0] if names and names[0] else info["cpu_model"])
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert isinstance(info["numa_nodes"], int) and info["numa_nodes"] >= 1


def test_the_kernel_list_format_is_read_as_the_kernel_writes_it():
    from loadbench import cpus
    assert cpus.parse_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert cpus.parse_list("0\n") == {0} and cpus.parse_list("\n") == set()
    with pytest.raises(ValueError):
        cpus.parse_list("0-x")


def test_overlapped_reads_stop_when_the_skeleton_fails_and_its_error_is_raised(tmp_path):
    """REF_OVERLAP=1 starts the reads before the skeleton. A skeleton that fails (here: a config
    transformers cannot build) stops the readers after their item and raises its own error, not
    a reader's, and never waits for a whole checkpoint's reads."""
    import threading
    import time

    from loadbench.loaders import reference_lib
    from loadbench.loaders.context import LoadContext
    seen: list[bool] = []

    def reads(stop: threading.Event | None) -> str:
        assert stop is not None
        seen.append(stop.wait(timeout=30))  # a long read that only a stop ends early
        raise RuntimeError("the reads were stopped")
    ctx = LoadContext(checkpoint=None, device=torch.device("cpu"), dtype=torch.float32,  # type: ignore[arg-type]
                      options={"overlap": True}, _config=object())
    start = time.monotonic()
    with pytest.raises(ValueError, match="Unrecognized configuration class") as info:
        reference_lib._skeleton_and(ctx, reads)
    assert seen == [True] and time.monotonic() - start < 20
    assert "skeleton" not in ctx.marks
    assert "the reads, stopped, said: RuntimeError('the reads were stopped')" in info.value.__notes__

    called: list[object] = []

    def quick(stop: threading.Event | None) -> str:
        called.append(stop)
        return "read"
    ctx = LoadContext(checkpoint=None, device=torch.device("cpu"), dtype=torch.float32,  # type: ignore[arg-type]
                      options={}, _config=object())
    with pytest.raises(ValueError, match="Unrecognized configuration class"):  # skeleton first: no reads
        reference_lib._skeleton_and(ctx, quick)
    assert called == []


def test_a_signal_while_waiting_on_overlapped_reads_stops_and_joins_them(tmp_path):
    """A pod's SIGTERM raises in the main thread, which with REF_OVERLAP=1 waits on the reads'
    thread after the skeleton: the readers are stopped and joined before the error goes on (the
    ring is unpinned after its last copy), never left running while the pod exits."""
    import signal
    import threading

    from loadbench import models
    from loadbench.loaders import reference_lib
    from loadbench.loaders.context import LoadContext

    class Terminated(Exception):
        pass
    seen: list[bool] = []
    threads: list[threading.Thread] = []

    def reads(stop: threading.Event | None) -> str:
        assert stop is not None
        threads.append(threading.current_thread())
        seen.append(stop.wait(timeout=30))
        return "read"

    def terminate(signum: int, frame: object) -> None:
        raise Terminated
    previous = signal.signal(signal.SIGALRM, terminate)
    try:
        ctx = LoadContext(checkpoint=None, device=torch.device("cpu"), dtype=torch.float32,  # type: ignore[arg-type]
                          options={"overlap": True}, _config=models.config_for("random/opt-tiny"))
        signal.setitimer(signal.ITIMER_REAL, 1.0)  # after the skeleton, during the wait
        with pytest.raises(Terminated):
            reference_lib._skeleton_and(ctx, reads)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert "skeleton" in ctx.marks  # the skeleton was built; the signal came in the wait
    assert seen == [True] and threads and not threads[0].is_alive()


def test_the_pipeline_stops_after_the_current_item_when_told(tmp_path):
    """`stop`, set by another thread, ends the readers after their item: the pipeline raises
    rather than return a half-filled destination; set before the pipeline, nothing is read."""
    import threading

    from loadbench.loaders import reference_lib
    stop = threading.Event()
    dest = torch.zeros(100 * 64, dtype=torch.uint8)
    items = [("f", ((i * 64, 64),), i * 64, 64) for i in range(100)]
    read_count: list[int] = []

    def read(src: str, spans: tuple, view: memoryview) -> None:
        read_count.append(1)
        stop.set()  # as the main thread would, after the first item
    with pytest.raises(RuntimeError, match="stopped before every item was read"):
        reference_lib.pipeline(dest, items, read, threads=1, buffers=1, stop=stop)
    assert len(read_count) == 1
    read_count.clear()
    with pytest.raises(RuntimeError, match="stopped before they began"):
        reference_lib.pipeline(dest, items, read, threads=2, buffers=2, stop=stop)
    assert read_count == []
    stop.clear()  # not set: every item read, as without a stop
    assert reference_lib.pipeline(dest, items, lambda s, sp, v: None, threads=2, buffers=2,
                                  stop=stop)["readers"] == 2
