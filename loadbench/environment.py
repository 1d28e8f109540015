"""The device a run targets and the facts about it that a result must carry."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import torch

from loadbench.libraries import version
from loadbench.settings import ConfigError


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
        import platform
        return {"type": "cpu", "name": platform.processor() or platform.machine(),
                "driver": None, "cuda": None, "memory_bytes": None}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "index": device.index, "name": props.name, "driver": _driver_version(),
            "cuda": torch.version.cuda, "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}"}


def versions(*packages: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("transformers", "safetensors", "tensorizer") + packages:
        out[name] = version(name)
    from loadbench import __version__
    out["loadbench"] = __version__
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples resident memory every few milliseconds while a load runs.

    ru_maxrss is a lifetime peak; a per-trial peak needs sampling.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
