#!/usr/bin/env python3
"""Fidelity A/B: loadbench against the bare library calls, interleaved.

For each library and cache mode, the same load is timed two ways, each in a
fresh process, alternating A B A B ...: A is deserialize_benchmark.py (one
trial, no ceilings, no inference: only the timed region matters), B is what a
user would write by hand with no loadbench code in the process except the
meta-device skeleton (the same on both sides). Interleaving makes both sides
meet the same drift of the machine. The report gives the median ratio A/B
and a bootstrap 95% interval of it: loadbench's overhead, with its noise.

    python benchmarks/fidelity.py --model-path DIR --samples 7 --modes warm --out fidelity.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBS = ("tensorizer", "safetensors", "huggingface", "huggingface-bin", "fastsafetensors",
        "runai-streamer", "instanttensor", "flashpack")


def weight_files(root: str, library: str) -> list[str]:
    sys.path.insert(0, ROOT)
    from loadbench import loaders
    from loadbench.storage.checkpoint import open_checkpoint
    return open_checkpoint(root, loaders.get(library).format).weight_files


def bare(root: str, library: str, mode: str) -> float:
    """One load as a user writes it; returns seconds (skeleton + weights + sync)."""
    sys.path.insert(0, ROOT)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from loadbench.models import skeleton  # the same meta skeleton loadbench times
    from loadbench.storage import cache
    with open(os.path.join(root, "manifest.json")) as f:
        dtype = getattr(torch, json.load(f)["model"]["dtype"])
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    config = AutoConfig.from_pretrained(root)
    skeleton(config, dtype)  # untimed warm-up of the modeling imports, as loadbench does
    paths = weight_files(root, library)
    cache.prepare(mode, paths)
    folder = os.path.dirname(paths[0])

    start = time.perf_counter()
    if library.startswith("huggingface"):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map="cuda",
                                                     use_safetensors=library == "huggingface")
    else:
        model = skeleton(config, dtype)
        state: dict = {}
        if library == "tensorizer":
            from tensorizer import TensorDeserializer
            d = TensorDeserializer(paths[0], device="cuda")
            d.load_into_module(model)
            d.close()
        elif library == "safetensors":
            from safetensors.torch import load_file
            for p in paths:
                state.update(load_file(p, device="cuda"))
        elif library == "fastsafetensors":
            from fastsafetensors import SafeTensorsFileLoader, SingleGroup
            loader = SafeTensorsFileLoader(SingleGroup(), "cuda:0", nogds=True)
            loader.add_filenames({0: paths})
            fb = loader.copy_files_to_device()
            state = {k: fb.get_tensor(k) for k in loader.get_keys()}
            fb.close()
            loader.close()
        elif library == "runai-streamer":
            from runai_model_streamer import SafetensorsStreamer
            with SafetensorsStreamer() as s:
                s.stream_files(paths)
                for name, t in s.get_tensors():
                    state[name] = t.to("cuda", non_blocking=True)
        elif library == "instanttensor":
            from instanttensor import safe_open
            with safe_open(list(paths), framework="pt", device=torch.device("cuda", 0)) as f:
                state = dict(f.tensors())
        elif library == "flashpack":
            from flashpack.deserialization import iterate_from_flash_tensor, read_flashpack_file
            storage, meta = read_flashpack_file(paths[0], device="cuda:0", silent=True)
            state = dict(iterate_from_flash_tensor(storage, meta))
        if state:
            model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def loadbench_side(root: str, library: str, mode: str) -> float:
    env = dict(os.environ, MODEL_PATH=root, LIBRARIES=library, CACHE_MODE=mode, NUM_TRIALS="1",
               CEILINGS="0", SKIP_INFERENCE="1", RESULT_LINES="1", RES_PATH="/tmp/fidelity-res",
               DEVICE="cuda", PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    with open(os.path.join(root, "manifest.json")) as f:
        env["MODEL_ID"] = json.load(f)["model"]["id"]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "deserialize_benchmark.py")], env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("LOADBENCH_RESULT "):
            doc = json.loads(line[len("LOADBENCH_RESULT "):])
            if doc["trials"] and doc["trials"][0]["status"] == "ok":
                return doc["trials"][0]["total_s"]
    raise RuntimeError(f"loadbench {library} {mode} failed: {proc.stderr.strip()[-300:]}")


def bare_side(root: str, library: str, mode: str) -> float:
    proc = subprocess.run([sys.executable, __file__, "--model-path", root, "--one", library, mode],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bare {library} {mode} failed: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def interval(a: list[float], b: list[float], n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of median(a) / median(b), resampling each side."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
                    for _ in range(n))
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def report(samples: dict) -> list[dict]:
    rows = []
    for key, s in samples.items():
        a, b = s["loadbench"], s["bare"]
        if len(a) < 2 or len(b) < 2:
            continue
        lo, hi = interval(a, b)
        rows.append({"library": key.split("|")[0], "mode": key.split("|")[1], "n": min(len(a), len(b)),
                     "loadbench_median_s": statistics.median(a), "bare_median_s": statistics.median(b),
                     "ratio": statistics.median(a) / statistics.median(b), "ci95": [lo, hi]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--samples", type=int, default=7, help="samples per side per cell")
    ap.add_argument("--libraries", default=",".join(LIBS))
    ap.add_argument("--modes", default="warm,cold")
    ap.add_argument("--out", help="samples and ratios (JSON)")
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds for the whole run")
    ap.add_argument("--one", nargs=2, metavar=("LIBRARY", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps({"seconds": bare(args.model_path, *args.one)}))
        return 0
    end = time.monotonic() + args.deadline
    samples: dict[str, dict[str, list[float]]] = {}
    for i in range(args.samples):  # round-robin: a deadline leaves every cell with equal samples
        for mode in args.modes.split(","):
            for lib in args.libraries.split(","):
                if time.monotonic() > end:
                    break
                cell = samples.setdefault(f"{lib}|{mode}", {"loadbench": [], "bare": []})
                order = [("loadbench", loadbench_side), ("bare", bare_side)]
                if i % 2:
                    order.reverse()  # ABBA: neither side always goes first
                for side, fn in order:
                    try:
                        cell[side].append(fn(args.model_path, lib, mode))
                    except RuntimeError as e:
                        print(e, flush=True)
                print(f"{mode} {lib} sample {i + 1}: loadbench {cell['loadbench'][-1:]} "
                      f"bare {cell['bare'][-1:]}", flush=True)
    rows = report(samples)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"samples": samples, "ratios": rows}, f, indent=1)
    for r in rows:
        print(f"{r['library']:16} {r['mode']:5} n={r['n']}  loadbench/bare = {r['ratio']:.3f} "
              f"(95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
