import os

import torch

from loadbench import cache, checksums

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
