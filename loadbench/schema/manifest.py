"""manifest.json: what save_models.py wrote (placeholder until the typed models land)."""

from __future__ import annotations

from typing import Any

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "loadbench.manifest/1"


def problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return ["not a JSON object"]
    return [f"lacks {k!r}" for k in ("model", "tensors", "formats") if k not in manifest]
