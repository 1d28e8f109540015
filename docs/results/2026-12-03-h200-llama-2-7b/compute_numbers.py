#!/usr/bin/env python3
"""Every number README.md quotes that summary.md does not already give, computed from the files
of this folder (raw/, manifest.json, logs/), and for "before", of the 2026-11-27 H200 run beside it
(its raw/) and of this session's smoke pods before the bytecode fix (logs/smoke-before/). Standard
library only:

    python docs/results/2026-12-03-h200-llama-2-7b/compute_numbers.py

Rules: a pod is one process (here one document: every pod ran one library, NUM_TRIALS=1);
"outside the timed loads" is the pod's total_s minus its trials' total_s, as summary.md's
"Pod overhead" section computes it; medians are statistics.median; GB is 10**9 bytes.
"""

from __future__ import annotations

import json
import statistics as st
from pathlib import Path

HERE = Path(__file__).resolve().parent
PHASES = ("startup and imports", "device init", "library import", "checkpoint open", "ceilings",
          "modeling imports", "prepare", "trials")


def documents() -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted((HERE / "raw").glob("llama-2-7b-*/*/*.json"))]
    return sorted(docs, key=lambda d: d["pod"]["process_started_at"])


def rng(values: list[float], fmt: str = ".3f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}–{hi:{fmt}}"


def state(doc: dict) -> str:
    return doc["settings"]["CACHE_MODE"]


def trials_table(docs: list[dict], model_bytes: int, ceilings: dict) -> None:
    print("## Medians per configuration (first-in-process trials; every pod ran one)\n")
    labels = sorted({d["label"] for d in docs})
    by: dict[tuple[str, str], list[dict]] = {}
    for d in docs:
        for t in d["trials"]:
            by.setdefault((state(d), d["label"]), []).append(t)
    ref = {m: st.median(t["total_s"] for t in by[(m, "reference")]) for m in ("cold", "warm")}
    limit = {"cold": ceilings["storage_read"]["gbps"], "warm": ceilings["h2d_pinned"]["gbps"]}
    print("| label | cold n | cold s (trials) | cold median s | GB/s | % storage read | x ref | "
          "warm n | warm s (trials) | warm median s | GB/s | % pinned H2D | x ref |")
    print("|---|" + "---|" * 12)
    for label in labels:
        cells = [label]
        for mode in ("cold", "warm"):
            ts = by.get((mode, label), [])
            m = st.median(t["total_s"] for t in ts)
            gbps = model_bytes / m / 1e9
            cells += [str(len(ts)), ", ".join(f"{t['total_s']:.3f}" for t in ts), f"{m:.3f}",
                      f"{gbps:.2f}", f"{gbps / limit[mode]:.0%}", f"{m / ref[mode]:.2f}"]
        print("| " + " | ".join(cells) + " |")
    every = [t for ts in by.values() for t in ts]
    print(f"\ntrials {len(every)}; index_in_process {sorted({t['index_in_process'] for t in every})}; "
          f"status {sorted({t['status'] for t in every})}; tensors verified "
          f"{sorted({t['tensors_verified'] for t in every})}; mismatches "
          f"{sum(len(t['mismatches']) for t in every)}")
    for mode in ("cold", "warm"):
        ts = [t for (m, _), v in by.items() if m == mode for t in v]
        sk = [t["skeleton_s"] for t in ts if t["skeleton_s"] is not None]
        print(f"{mode}: n={len(ts)}, resident_before {rng([t['resident_before'] for t in ts])}, "
              f"skeleton_s {rng(sk)} (median {st.median(sk):.3f}; {len(ts) - len(sk)} trials of "
              f"from_pretrained have none), cache_s {rng([t['cache_s'] for t in ts], '.2f')} "
              f"(median {st.median(t['cache_s'] for t in ts):.2f}), verify_s "
              f"{rng([t['verify_s'] for t in ts])}")
    first = [(d["label"], t) for d in docs for t in d["trials"] if t.get("first_token_s") is not None]
    print("first token s (warm round 1, one sample each): "
          + ", ".join(f"{lab} {t['first_token_s']:.2f} ({t['tokens_per_s']:.0f} tokens/s)"
                      for lab, t in first))
    print()


def io_table(docs: list[dict]) -> None:
    print("## Bytes read during the timed load (/proc/self/io), median per configuration, GB\n")
    print("| label | cold storage | cold page cache | warm storage | warm page cache |")
    print("|---|---|---|---|---|")
    for label in sorted({d["label"] for d in docs}):
        cells = [label]
        for mode in ("cold", "warm"):
            ts = [t for d in docs if d["label"] == label and state(d) == mode for t in d["trials"]]
            for key in ("storage_read_bytes", "cache_read_bytes"):
                cells.append(f"{st.median(t[key] for t in ts) / 1e9:.3f}")
        print("| " + " | ".join(cells) + " |")
    print()


def pod_table(docs: list[dict]) -> None:
    print("## Per-pod time outside the timed loads (median over pods, seconds)\n")

    def row(d: dict) -> dict[str, float]:
        ph = {p["name"]: p["seconds"] for p in d["pod"]["phases"]}
        loads = sum(t["total_s"] for t in d["trials"])
        inf = sum(t.get("inference_s") or 0.0 for t in d["trials"])
        cache = sum(t["cache_s"] for t in d["trials"])
        verify = sum(t["verify_s"] for t in d["trials"])
        out = {name: ph.get(name, 0.0) for name in PHASES}
        out.update({"timed loads": loads, "trials outside the loads": ph["trials"] - loads,
                    "  cache_s (evict, or check residency)": cache, "  verify_s": verify,
                    "  inference_s": inf, "  rest of the trial": ph["trials"] - loads - cache - verify - inf,
                    "pod total": d["pod"]["total_s"], "outside the timed loads": d["pod"]["total_s"] - loads})
        return out

    rows = [(d, row(d)) for d in docs]
    groups = {
        "all": [r for _, r in rows],
        "cold": [r for d, r in rows if state(d) == "cold"],
        "warm": [r for d, r in rows if state(d) == "warm"],
        "warm, no ceilings, no inference": [r for d, r in rows if state(d) == "warm"
                                            and r["ceilings"] < 1 and r["  inference_s"] == 0],
        "warm round 1 (inference)": [r for d, r in rows if state(d) == "warm"
                                     and r["  inference_s"] > 0],
    }
    keys = list(groups["all"][0])
    print("| phase | " + " | ".join(f"{g} ({len(v)} pods)" for g, v in groups.items()) + " |")
    print("|---|" + "---|" * len(groups))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{st.median(r[k] for r in v):.2f}" for v in groups.values()) + " |")
    allr = groups["all"]
    for k in ("startup and imports", "device init", "prepare", "outside the timed loads"):
        print(f"{k}: range {rng([r[k] for r in allr], '.2f')} s over {len(allr)} pods")
    print(f"pods with ceilings measured: {[round(r['ceilings'], 2) for r in allr if r['ceilings'] > 1]}")
    print()


def ceilings_text(ceil: dict) -> dict:
    c = ceil["ceilings"]
    print("## Node ceilings (raw/ceilings/*.json)\n")
    print(f"measured {ceil['measured_at']} by {ceil['measured_by']}, node {ceil['node']}, device "
          f"{ceil['device']}, filesystem {ceil['filesystem']}")
    for name in ("storage_read", "storage_read_aggregate"):
        tries = c[name]["tries"]
        print(f"{name}: {c[name]['gbps']:.2f} GB/s ({c[name]['method']}); tries: "
              + "; ".join(f"{k} {v['gbps']:.2f}" for k, v in tries.items()))
        print(f"  any fio try: {any('fio' in k or 'fio' in v['method'] for k, v in tries.items())}")
    for name in ("page_cache_read", "h2d_pinned", "h2d_pageable"):
        print(f"{name}: {c[name]['gbps']:.2f} GB/s ({c[name]['method']})")
    print()
    return c


def before() -> None:
    """Pod phases before this session's change: the 2026-11-27 run's documents (one `prepare`
    phase) and this session's llama-tiny smoke pods on the same kind before the fix (split)."""
    old = HERE.parent / "2026-11-27-h200-llama-2-7b" / "raw"
    docs = [json.loads(p.read_text()) for p in sorted(old.glob("llama-2-7b-*/*/*.json"))]
    out = [d["pod"]["total_s"] - sum(t["total_s"] for t in d["trials"]) for d in docs]
    ph = [{p["name"]: p["seconds"] for p in d["pod"]["phases"]} for d in docs]
    print(f"## Before: {old.parent.name}, {len(docs)} pods\n")
    print(f"outside the timed loads: median {st.median(out):.2f} s, range {rng(out, '.2f')}; startup and "
          f"imports median {st.median(p['startup and imports'] for p in ph):.2f}; prepare median "
          f"{st.median(p['prepare'] for p in ph):.2f}\n")
    smoke_dir = HERE / "logs" / "smoke-before" / "r"
    smoke = [json.loads(p.read_text()) for p in sorted(smoke_dir.glob("*/*/*.json"))]
    print(f"## Before, this session: {len(smoke)} llama-tiny smoke pods (PYTHONDONTWRITEBYTECODE=1, no "
          f"bytecode prefix, the machine's transformers)\n")
    print("| label | pod total | startup and imports | library import | modeling imports | trials |")
    print("|---|---|---|---|---|---|")
    for d in smoke:
        p = {x["name"]: x["seconds"] for x in d["pod"]["phases"]}
        print(f"| {d['label']} | {d['pod']['total_s']:.2f} | {p['startup and imports']:.2f} | "
              f"{p['library import']:.2f} | {p['modeling imports']:.2f} | {p['trials']:.2f} |")
    mi = [next(x["seconds"] for x in d["pod"]["phases"] if x["name"] == "modeling imports") for d in smoke]
    print(f"\nmodeling imports: median {st.median(mi):.2f} s, range {rng(mi, '.2f')}\n")


def main() -> None:
    docs = documents()
    manifest = json.loads((HERE / "manifest.json").read_text())
    ceil = json.loads(next((HERE / "raw" / "ceilings").glob("*.json")).read_text())
    print(f"{len(docs)} documents: {sum(state(d) == 'cold' for d in docs)} cold, "
          f"{sum(state(d) == 'warm' for d in docs)} warm; first pod {docs[0]['pod']['process_started_at']}, "
          f"last document {max(d['finished_at'] for d in docs)}\n")
    m = manifest["model"]
    print(f"model {m['id']} {m['dtype']}: {m['params']} parameters, {m['bytes']} bytes, {m['tensors']} "
          f"tensors, built in {manifest['build_s']:.1f} s on {manifest['build_device']}")
    weights = (".safetensors", ".tensors", ".bin", ".flashpack")
    print("save (one each, fsync included): " + ", ".join(
        f"{k} {v['save_s'][0]:.2f} s ({sum(f['name'].endswith(weights) for f in v['files'])} weight "
        f"file(s), {v['bytes'] / 1e9:.3f} GB)" for k, v in manifest["formats"].items()) + "\n")
    c = ceilings_text(ceil)
    trials_table(docs, m["bytes"], c)
    io_table(docs)
    pod_table(docs)
    before()
    it = [t for d in docs if d["label"] == "instanttensor-backendURING_BUFFERED" and state(d) == "warm"
          for t in d["trials"]]
    for t in it:
        print(f"instanttensor URING_BUFFERED, warm, in a loadbench pod: total {t['total_s']:.3f} s = "
              f"skeleton {t['skeleton_s']:.3f} + weights {t['weights_s']:.3f}")


if __name__ == "__main__":
    main()
