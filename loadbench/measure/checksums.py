"""Exact per-tensor checksums, computed where the tensor lives.

A trial counts only if every tensor arrived bit for bit. Hashing on the host
would mean copying every loaded byte back over PCIe, which can cost more than
the load it checks, so the checksum is integer arithmetic that runs on the
device: the tensor's bytes as signed 32-bit words w_i (a 1-3 byte tail as unsigned single
bytes), and the pair

    s1 = sum(w_i)          s2 = sum((i + 1) * w_i)      (both mod 2**64)

s1 catches any changed word; s2 also catches swapped or shifted words (the
position weight). Integer sums are exact and order-independent, so the CPU
that wrote the manifest and the GPU that verifies agree bit for bit. It is
an error-detecting code, not a cryptographic hash.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

ALGORITHM = "lb-fletcher64/1"
CHUNK_WORDS = 1 << 24  # bounds the int64 temporaries to 128 MiB per chunk
MASK = (1 << 64) - 1


def _words(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    body = flat.numel() // 4 * 4
    return flat[:body].view(torch.int32), flat[body:]


def _chunk_sums(words: torch.Tensor, first_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    s1 = torch.zeros((), dtype=torch.int64, device=words.device)
    s2 = torch.zeros((), dtype=torch.int64, device=words.device)
    for start in range(0, words.numel(), CHUNK_WORDS):
        part = words[start:start + CHUNK_WORDS].to(torch.int64)
        index = torch.arange(first_index + start + 1, first_index + start + 1 + part.numel(),
                             dtype=torch.int64, device=words.device)
        s1 += part.sum()
        s2 += (part * index).sum()
    return s1, s2


def tensor_checksum_lazy(tensor: torch.Tensor) -> torch.Tensor:
    """The (s1, s2) pair as a device tensor, so many can be gathered with one sync."""
    body, tail = _words(tensor)
    s1, s2 = _chunk_sums(body, 0)
    if tail.numel():
        t1, t2 = _chunk_sums(tail, body.numel())
        s1, s2 = s1 + t1, s2 + t2
    return torch.stack([s1, s2])


def _hex(pair: Iterable[int]) -> str:
    return "".join(f"{int(v) & MASK:016x}" for v in pair)


def tensor_checksum(tensor: torch.Tensor) -> str:
    return _hex(tensor_checksum_lazy(tensor).tolist())


def describe(tensor: torch.Tensor) -> dict[str, Any]:
    return {
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "nbytes": tensor.numel() * tensor.element_size(),
    }


def state_checksums(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Manifest entries for every tensor of a state dict, one host sync in all."""
    names = sorted(state)
    pairs = [tensor_checksum_lazy(state[n]) for n in names]
    out = {}
    for name, pair in zip(names, pairs):
        entry = describe(state[name])
        entry["checksum"] = _hex(pair.tolist())
        out[name] = entry
    return out


def verify(state: Mapping[str, torch.Tensor], expected: Mapping[str, Mapping[str, Any]],
           device: torch.device) -> tuple[int, list[dict[str, str]]]:
    """Compare a loaded state with the manifest: (tensors verified, mismatches).

    A mismatch names the tensor and what differed, so a failed trial says
    exactly what arrived wrong.
    """
    mismatches: list[dict[str, str]] = []
    for name in sorted(set(expected) - set(state)):
        mismatches.append({"tensor": name, "problem": "missing from the loaded model"})
    for name in sorted(set(state) - set(expected)):
        mismatches.append({"tensor": name, "problem": "not in the manifest"})
    names = sorted(set(state) & set(expected))
    pending = []
    for name in names:
        tensor, want = state[name], expected[name]
        got = describe(tensor)
        if tensor.device.type == "meta":
            mismatches.append({"tensor": name, "problem": "still on the meta device (never loaded)"})
        elif tensor.device != device:
            mismatches.append({"tensor": name, "problem": f"on {tensor.device}, expected {device}"})
        elif got["dtype"] != want["dtype"] or got["shape"] != list(want["shape"]):
            mismatches.append({"tensor": name, "problem":
                               f"{got['dtype']}{got['shape']} != manifest "
                               f"{want['dtype']}{list(want['shape'])}"})
        else:
            pending.append((name, tensor_checksum_lazy(tensor)))
    if pending:
        sums = torch.stack([p for _, p in pending]).tolist()  # one device sync
        for (name, _), pair in zip(pending, sums):
            if _hex(pair) != expected[name]["checksum"]:
                mismatches.append({"tensor": name, "problem": "checksum differs (bytes changed)"})
    verified = len(names) - sum(1 for m in mismatches if m["tensor"] in expected
                                and m["tensor"] in state)
    return verified, mismatches
