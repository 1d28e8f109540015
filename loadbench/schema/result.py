"""The result document (placeholder until the typed models land)."""

from __future__ import annotations

from typing import Any

SCHEMA = "loadbench.result/2"
READABLE = ("loadbench.result/1", "loadbench.result/2")
LOG_PREFIX = "LOADBENCH_RESULT "
TRIAL_KEYS = ("status", "cache_mode", "resident_before", "skeleton_s", "weights_s", "total_s",
              "gbps", "ceiling_fraction", "peak_rss_bytes", "peak_device_bytes",
              "tensors_verified", "mismatches", "started_at", "finished_at")


def problems(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    if doc.get("schema") not in READABLE:
        return [f"schema is {doc.get('schema')!r}, this reader understands {', '.join(READABLE)}"]
    return []
