"""The machine a run measures: its device, identity, versions and memory peaks.

Everything a result document says about where it was produced comes from here.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import threading
import time
from typing import Any, Mapping

import torch

from loadbench import cpus, loaders
from loadbench.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """DEVICE as a torch.device; asking for a GPU that is not there is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"DEVICE={name} but no GPU is visible to torch {torch.__version__} "
                f"(CUDA build: {torch.version.cuda or 'none'}): request nvidia.com/gpu in the pod, "
                f"or set DEVICE=cpu")
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise ConfigError(f"DEVICE={name} but only {count} GPU(s) are visible")
        device = torch.device("cuda", index)
    return device


def init_device(device: torch.device) -> None:
    """Create the CUDA context before any clock starts: every library pays it equally."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)


def _driver_version() -> str | None:
    try:
        import pynvml  # from nvidia-ml-py, present on most CUDA images
        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception:
        pass
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
        return first.split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"type": "cpu", "name": platform.processor() or platform.machine(),
                "driver": None, "cuda": None, "memory_bytes": None}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "index": device.index, "name": props.name, "driver": _driver_version(),
            "cuda": torch.version.cuda, "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}"}


def versions() -> dict[str, str | None]:
    """python, torch and every package the registry knows, installed or not (None)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in loaders.package_names():
        out[name] = loaders.version(name)
    out["loadbench"] = loaders.version("loadbench")
    return out


def identity(ident: Mapping[str, Any]) -> dict[str, Any]:
    """Who produced a document: the pod, its Job and node (Downward API), or this host."""
    return {
        "job": ident.get("JOB_NAME") or None,
        "completion_index": ident.get("JOB_COMPLETION_INDEX"),
        "pod": ident.get("POD_NAME") or None,
        "pod_uid": ident.get("POD_UID") or None,
        "node": ident.get("NODE_NAME") or socket.gethostname(),
        "namespace": ident.get("POD_NAMESPACE") or None,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def _cpu_model() -> str | None:
    """The CPU's name: two machines of one kind can differ in it, and then in every phase that
    runs on the CPU (imports, page-cache copies), so runs that should not be mixed can be told.
    x86 names it ("model name"); ARM gives its implementer and part numbers instead."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name")
    if not name and fields.get("CPU implementer"):
        name = f"ARM implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    name = name or platform.processor()
    return name[:200] if name else None


def _numa_nodes() -> int | None:
    """NUMA nodes with CPUs (memory-only nodes, as GPU memory on a GH200, are not counted)."""
    try:
        with open("/sys/devices/system/node/has_cpu") as f:
            return len(cpus.parse_list(f.read())) or None
    except (OSError, ValueError):
        pass
    try:
        return sum(1 for name in os.listdir("/sys/devices/system/node")
                   if name.startswith("node") and name[4:].isdigit()) or None
    except OSError:
        return None


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "numa_nodes": _numa_nodes(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": cpus.usable(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": sys.version.split()[0],
    }


def process_started_at() -> float:
    """This process's start, as a Unix time: the pod's clock starts there, not at main()."""
    try:
        import psutil
        return psutil.Process().create_time()
    except Exception:
        return time.time()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _hwm_bytes() is not None
    except OSError:
        return False


class PeakRSS:
    """The peak resident memory of a load.

    The kernel keeps the peak itself (VmHWM), and it can be reset per trial,
    so nothing runs during the load. Only where that reset is refused does a
    thread sample RSS, every 20 ms: a 5 ms sampler competed with Python-heavy
    loaders for the GIL (the fidelity A/B measures what is left).
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self.method = "VmHWM"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> "PeakRSS":
        self.peak = _rss_bytes()
        if not _reset_hwm():
            self.method = f"sampled every {self.interval * 1000:.0f} ms"
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = max(self.peak, _hwm_bytes() or 0)
        self.peak = max(self.peak, _rss_bytes())


def io_counters() -> tuple[int, int] | None:
    """(read_bytes, rchar) of this process from /proc/self/io, threads included; None where the
    kernel does not expose it. read_bytes is what the process made storage fetch; rchar what
    its read calls returned, page-cache hits included (mmap faults count in neither)."""
    try:
        with open("/proc/self/io") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["read_bytes"]), int(fields["rchar"])
    except (OSError, KeyError, ValueError):
        return None


def io_delta(before: tuple[int, int] | None) -> dict[str, int | None]:
    """Bytes this process read from storage, and from the page cache, since `before`."""
    after = io_counters()
    if before is None or after is None:
        return {"storage_read_bytes": None, "cache_read_bytes": None}
    storage = max(0, after[0] - before[0])
    return {"storage_read_bytes": storage,
            "cache_read_bytes": max(0, (after[1] - before[1]) - storage)}
