#!/usr/bin/env python3
"""Fidelity check: the same loads with bare library calls, no loadbench code.

Reads a checkpoint folder written by save_models.py and times, in a fresh
process per trial, what a user would write by hand for each library:
skeleton (accelerate's init_empty_weights) + weights + torch.cuda.synchronize.
Cold trials evict the files with posix_fadvise first. Compare its medians
with loadbench's: the difference is loadbench's overhead.

    python benchmarks/bare_load.py --model-path DIR --trials 3 --out bare.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "tensorizer": {}, "tensorizer-numreaders16": {"num_readers": 16}, "safetensors": {},
    "huggingface": {}, "huggingface-bin": {}, "fastsafetensors": {}, "runai-streamer": {},
}


def files_of(root: str, label: str) -> list[str]:
    if label.startswith("tensorizer"):
        return [os.path.join(root, "tensorizer", "model.tensors")]
    if label == "huggingface-bin":
        return [os.path.join(root, "bin", "pytorch_model.bin")]
    return sorted(glob.glob(os.path.join(root, "safetensors", "*.safetensors")))


def evict(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def warm(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass


def one(root: str, label: str, mode: str) -> float:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    config = AutoConfig.from_pretrained(root)
    with init_empty_weights():  # untimed warm-up of the modeling imports
        AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    paths = files_of(root, label)
    (evict if mode == "cold" else warm)(paths)

    start = time.perf_counter()
    if label.startswith("huggingface"):
        folder = os.path.join(root, "bin" if label.endswith("bin") else "safetensors")
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16, device_map="cuda",
                                             use_safetensors=not label.endswith("bin"))
    else:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
        if label.startswith("tensorizer"):
            from tensorizer import TensorDeserializer
            d = TensorDeserializer(paths[0], device="cuda", **CONFIGS[label])
            d.load_into_module(model)
            d.close()
        else:
            state = {}
            if label == "safetensors":
                from safetensors.torch import load_file
                for p in paths:
                    state.update(load_file(p, device="cuda"))
            elif label == "fastsafetensors":
                from fastsafetensors import SafeTensorsFileLoader, SingleGroup
                loader = SafeTensorsFileLoader(SingleGroup(), "cuda:0", nogds=True)
                loader.add_filenames({0: paths})
                fb = loader.copy_files_to_device()
                state = {k: fb.get_tensor(k) for k in loader.get_keys()}
                fb.close()
                loader.close()
            elif label == "runai-streamer":
                from runai_model_streamer import SafetensorsStreamer
                with SafetensorsStreamer() as s:
                    s.stream_files(paths)
                    for name, t in s.get_tensors():
                        state[name] = t.to("cuda", non_blocking=True)
            model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", help="where the samples go (JSON)")
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds for the whole run")
    ap.add_argument("--modes", default="cold,warm")
    ap.add_argument("--one", nargs=2, metavar=("LABEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps({"seconds": one(args.model_path, *args.one)}))
        return 0
    end = time.monotonic() + args.deadline
    samples: dict[str, dict[str, list[float]]] = {}
    for mode in args.modes.split(","):
        for trial in range(args.trials):
            for label in CONFIGS:
                if time.monotonic() > end:
                    break
                proc = subprocess.run([sys.executable, __file__, "--model-path", args.model_path,
                                       "--one", label, mode], capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{label} {mode}: failed: {proc.stderr.strip()[-300:]}", flush=True)
                    continue
                seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
                samples.setdefault(label, {}).setdefault(mode, []).append(seconds)
                print(f"bare {mode} {label} trial {trial + 1}: {seconds:.3f} s", flush=True)
    with open(args.out, "w") as f:
        json.dump({"samples": samples, "trials": args.trials}, f, indent=1)
    for label, modes in samples.items():
        print(label, {m: round(statistics.median(v), 3) for m, v in modes.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
