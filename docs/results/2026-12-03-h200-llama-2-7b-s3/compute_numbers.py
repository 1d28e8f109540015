#!/usr/bin/env python3
"""The numbers README.md quotes about the loads from object storage that summary.md does not
give: each pod's download and weights phases, the GET ceiling each warm pod measured (every try),
the download's rate against this disk's write rate, and the upload. From raw/ and logs/ only,
standard library only:

    python docs/results/2026-12-03-h200-llama-2-7b-s3/compute_numbers.py

GB is 10**9 bytes; a rate is the checkpoint's bytes (manifest.json) over the phase's seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def docs(pattern: str) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted((HERE / "raw").glob(pattern))]
    return sorted(found, key=lambda d: (d["settings"]["CACHE_MODE"], d["trials"][0]["total_s"]))


def name(d: dict) -> str:
    read = d["settings"].get("S3_READ") or "native"
    return d["label"] + (" (S3_READ=download)" if read == "download" else "")


def main() -> None:
    nbytes = sum(t["nbytes"] for t in json.loads((HERE / "manifest.json").read_text())["tensors"].values())
    print(f"checkpoint: {nbytes / 1e9:.3f} GB of tensors\n")
    print("## Loads from s3://loadbench/llama-2-7b (one pod, one trial each)\n")
    print("| mode | configuration | total s | GB/s | download s | download GB/s | weights s | "
          "GET ceiling of its pod, GB/s (best try) | % of it |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in docs("llama-2-7b-s3-*/*/*.json"):
        t = d["trials"][0]
        get = (d.get("ceilings") or {}).get("s3_get") or {}
        best = get.get("gbps")
        tries = ", ".join(f"{k} {v['gbps']:.2f}" for k, v in (get.get("tries") or {}).items())
        dl, rate = t.get("download_s"), nbytes / t["total_s"] / 1e9
        cells = [d["settings"]["CACHE_MODE"], name(d), f"{t['total_s']:.3f}", f"{rate:.2f}",
                 f"{dl:.3f}" if dl else "-", f"{nbytes / dl / 1e9:.2f}" if dl else "-",
                 f"{t['weights_s']:.3f}", f"{best:.2f} ({tries})" if best else "not measured (cold)",
                 f"{rate / best:.0%}" if best else "-"]
        print("| " + " | ".join(cells) + " |")
    bests = [d["ceilings"]["s3_get"]["gbps"] for d in docs("llama-2-7b-s3-warm/*/*.json")]
    print(f"\nGET ceiling over the 7 warm pods: {min(bests):.2f}–{max(bests):.2f} GB/s "
          "(each pod measured its own, 1 s a try)\n")
    print("## This disk's write rate (the saves, logs/*save.log)\n")
    for log in ("local-save.log", "s3-save.log"):
        for m in re.finditer(r"saved (\w+) \((\S+)\) 1/1 in ([\d.]+) s \(([\d.]+) GB/s\)",
                             (HERE / "logs" / log).read_text()):
            print(f"- {log}: {m[1]} written in {m[3]} s, {m[4]} GB/s")
    up = re.search(r"s3: upload (\{.*\})", (HERE / "logs" / "s3.log").read_text())
    if up:
        u = json.loads(up[1])
        print(f"\n## Upload\n\n{u['bytes'] / 1e9:.2f} GB in {u['seconds']:.1f} s, {u['gbps']:.2f} GB/s: "
              f"{u['method']}")


if __name__ == "__main__":
    main()
