"""The storage ceiling's fio tries, with the real fio: several jobs must read several ranges."""

from __future__ import annotations

import os
import shutil

import pytest

from loadbench.storage import cache, ceilings

pytestmark = pytest.mark.skipif(not shutil.which("fio"), reason="fio is not installed (apt-get install fio)")

MIB = 1 << 20


@pytest.fixture
def files(tmp_path):
    """A 64 MiB file and a 16 MiB one, as a checkpoint's shards."""
    out = []
    for name, size in (("big.bin", 64 * MIB), ("small.bin", 16 * MIB)):
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        out.append(str(path))
    return out


@pytest.mark.parametrize("direct", [False, True])
def test_jobs_read_disjoint_ranges_not_the_same_bytes(files, direct):
    """Four jobs at offset 0 of the same files read one copy from disk and three from the page
    cache: the aggregate then counts 4x the bytes (5.2 GB/s on a 1.7 GB/s disk)."""
    cache.evict(files)
    try:
        got = ceilings._fio(files, 5, direct, 4, 4)
    except OSError as e:  # O_DIRECT refused (tmpfs): the buffered case still runs
        pytest.skip(f"fio refused: {e}")
    assert got["bytes"] == 64 * MIB, got  # 16 MiB a job, 64 MiB in all
    assert "each 16 MiB of big.bin" in got["method"], got["method"]
    if not direct:  # ... and every page of the file: four jobs over the same 16 MiB would leave
        assert cache.residency([files[0]]) > 0.95  # 75% of it out of the page cache


def test_the_residency_check_can_tell(files):
    """The check above means something only where eviction works on the test's filesystem."""
    cache.evict(files)
    if cache.residency([files[0]]) > 0.05:
        pytest.skip("eviction has no effect here (tmpfs?)")
    with open(files[0], "rb") as f:
        f.read(16 * MIB)
    assert 0.2 < cache.residency([files[0]]) < 0.5


def test_one_job_reads_every_file(files):
    cache.evict(files)
    got = ceilings._fio(files, 5, False, 1, 1)
    assert got["bytes"] == 80 * MIB, got
    assert "each" not in got["method"]


def test_a_file_too_small_for_the_jobs_is_refused_plainly(tmp_path):
    path = tmp_path / "tiny.bin"
    path.write_bytes(b"\0" * MIB)
    with pytest.raises(ValueError, match="under 4 x 8 MiB"):
        ceilings._fio([str(path)], 1, False, 4, 1)
