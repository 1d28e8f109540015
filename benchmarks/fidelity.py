#!/usr/bin/env python3
"""Fidelity A/B: loadbench against the bare library calls, interleaved.

For each library and cache mode, the same load is timed two ways, each in a
process of its own that loads once, alternating A B B A ...: A is loadbench's
pod (deserialize_benchmark.py: one trial, no ceilings, no inference: only the
timed region matters), B is what a user would write by hand with no loadbench
code in the process except the meta-device skeleton (the same on both sides).
Interleaving makes both sides meet the same drift of the machine. The report
gives the median ratio A/B and a bootstrap 95% interval of it: loadbench's
overhead, with its noise. It gives it two ways: unpaired (the ratio of the two
sides' medians, each side resampled on its own) and paired (the median of the
ratios of the two samples of one round, the rounds resampled). The paired one
is the analysis this design was built for: the two samples of a round meet the
same state of the machine (on an H200, n = 30, the sides' weights times
correlated at 0.57-0.62 round by round), which the unpaired interval counts as
noise on both sides.

Warm loads of one process differ by ~10% from the next, so an interval inside
+-5% takes about 30 samples a side. A fresh interpreter spends 5-7 s importing
torch and transformers before a 0.4-3 s load; by default (--start forkserver)
each sample is instead a child forked from a server that imported them once
and nothing else: CUDA is initialised in the child, the library is imported
there, and the child loads once and exits, on both sides alike. --start fresh
runs a new interpreter per sample, as a pod does.

    python benchmarks/fidelity.py --model-path DIR --samples 30 --modes warm --out fidelity.json

A run split over calls (each library's cells in a call of their own, on one machine) is put
together afterwards, its ratios computed again from the raw samples:

    python benchmarks/fidelity.py --merge call1.json call2.json --out fidelity.json
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from loadbench import loaders  # noqa: E402
from loadbench.schema.result import LOG_PREFIX  # noqa: E402

# Every library a user picks (the instrument is loadbench's own, with nothing bare to compare).
LIBS = tuple(lib.name for lib in loaders.LIBRARIES if lib.role != "instrument")


def weight_files(root: str, library: str) -> list[str]:
    from loadbench.storage.checkpoint import open_checkpoint
    return open_checkpoint(root, loaders.get(library).format).weight_files


# --- bare: each library's documented minimal usage ----------------------------------------
# Imports happen before the clock, as at the top of a user's program (loadbench imports the
# library untimed too); the clock covers skeleton + weights + device sync on both sides.
# Sources of the calls (the versions in benchmarks/gpu-wheels.txt):
#   tensorizer README "Deserialization": TensorDeserializer(path, device=...).load_into_module(model)
#   safetensors docs "torch API": safetensors.torch.load_file(path, device="cuda")
#   transformers docs: AutoModelForCausalLM.from_pretrained(path, dtype=..., device_map="cuda")
#   fastsafetensors README: SafeTensorsFileLoader(SingleGroup(), device, nogds=True), copy_files_to_device()
#   runai-model-streamer README: SafetensorsStreamer().stream_files(paths); get_tensors()
#   instanttensor README: safe_open(paths, framework="pt", device=...) and f.tensors()
#   flashpack README: read_flashpack_file(path, device=...) and iterate_from_flash_tensor

def _tensorizer(paths: list[str], model: Any, device: str) -> dict[str, Any]:
    from tensorizer import TensorDeserializer
    d = TensorDeserializer(paths[0], device=device)
    d.load_into_module(model)
    d.close()
    return {}


def _safetensors(paths: list[str], model: Any, device: str) -> dict[str, Any]:
    from safetensors.torch import load_file
    state: dict[str, Any] = {}
    for p in paths:
        state.update(load_file(p, device=device))
    return state


def _fastsafetensors(paths: list[str], model: Any, device: str) -> dict[str, Any]:
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    loader = SafeTensorsFileLoader(SingleGroup(), device, nogds=True)
    loader.add_filenames({0: paths})
    fb = loader.copy_files_to_device()
    state = {k: fb.get_tensor(k) for k in loader.get_keys()}
    fb.close()
    loader.close()
    return state


def _runai(paths: list[str], model: Any, device: str) -> dict[str, Any]:
    from runai_model_streamer import SafetensorsStreamer
    state = {}
    with SafetensorsStreamer() as s:
        s.stream_files(paths)
        for name, t in s.get_tensors():
            state[name] = t.to(device, non_blocking=True)
    return state


def _instanttensor(paths: list[str], model: Any, device: str) -> dict[str, Any]:
    import torch
    from instanttensor import Backend, safe_open
    backend = os.environ.get("IT_BACKEND")  # the same backend on both sides (loadbench reads it too)
    kwargs = {"backend": getattr(Backend, backend)} if backend and backend != "default" else {}
    with safe_open(list(paths), framework="pt", device=torch.device(device), **kwargs) as f:
        return dict(f.tensors())


def _flashpack(paths: list[str], model: Any, device: str) -> dict[str, Any]:
    from flashpack.deserialization import iterate_from_flash_tensor, read_flashpack_file
    storage, meta = read_flashpack_file(paths[0], device=device, silent=True)
    return dict(iterate_from_flash_tensor(storage, meta))


BARE: dict[str, Any] = {"tensorizer": _tensorizer, "safetensors": _safetensors,
                        "huggingface": None, "huggingface-bin": None,  # from_pretrained, no skeleton
                        "fastsafetensors": _fastsafetensors, "runai-streamer": _runai,
                        "instanttensor": _instanttensor, "flashpack": _flashpack}
PACKAGES = {"tensorizer": "tensorizer", "safetensors": "safetensors.torch", "fastsafetensors":
            "fastsafetensors", "runai-streamer": "runai_model_streamer", "instanttensor": "instanttensor",
            "flashpack": "flashpack.deserialization", "huggingface": "transformers",
            "huggingface-bin": "transformers"}


def bare(root: str, library: str, mode: str, device: str = "cuda") -> dict[str, float]:
    """One load as a user writes it: the same phases loadbench times."""
    import importlib

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from loadbench.models import skeleton  # the same meta skeleton loadbench times
    from loadbench.storage import cache
    importlib.import_module(PACKAGES[library])  # the user's `import`, before any clock
    with open(os.path.join(root, "manifest.json")) as f:
        dtype = getattr(torch, json.load(f)["model"]["dtype"])
    target = "cuda:0" if device == "cuda" else device
    cuda = target.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    torch.zeros(1, device=target)  # the device's context, before any clock (loadbench's too)
    sync()
    config = AutoConfig.from_pretrained(root)
    skeleton(config, dtype)  # untimed warm-up of the modeling imports, as loadbench does
    paths = weight_files(root, library)
    cache.prepare(mode, paths)
    folder = os.path.dirname(paths[0])

    start = time.perf_counter()
    skeleton_at = start
    model: Any
    if BARE[library] is None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=target,
                                                     use_safetensors=library == "huggingface")
    else:
        model = skeleton(config, dtype)
        skeleton_at = time.perf_counter()
        state = BARE[library](paths, model, target)
        if state:
            model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        # The whole model on the device, as a user needs it to run and as loadbench ends its load
        # (models.finish): the skeleton's non-persistent buffers (rotary inv_freq) are built on
        # the CPU. The files up to docs/results/2026-12-05-h200-llama-2-7b-fidelity-six were
        # measured with the bare side leaving them there (the likely 8 ms of InstantTensor's
        # 0.34 s); their meta lacks bare_to_device, and merge() keeps them apart from newer ones.
        model.to(target)
    sync()
    end = time.perf_counter()
    return {"total_s": end - start, "skeleton_s": skeleton_at - start, "weights_s": end - skeleton_at,
            "pid": os.getpid(), "ppid": os.getppid()}


PHASES = ("total_s", "skeleton_s", "weights_s")


def _pod_env(root: str, library: str, mode: str, device: str, res: str) -> dict[str, str]:
    """A pod's settings for one trial of `library`: no ceilings, no inference, one result."""
    env = dict(os.environ, MODEL_PATH=root, LIBRARIES=library, CACHE_MODE=mode, NUM_TRIALS="1",
               CEILINGS="0", SKIP_INFERENCE="1", RESULT_LINES="1", RES_PATH=res, DEVICE=device,
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    with open(os.path.join(root, "manifest.json")) as f:
        env["MODEL_ID"] = json.load(f)["model"]["id"]
    return env


def _timed(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("trials") and doc["trials"][0]["status"] == "ok":
        t = doc["trials"][0]
        return {**{k: t[k] or 0.0 for k in PHASES}, "pid": (doc.get("identity") or {}).get("pid")}
    return None


def _run(what: str, cmd: list[str], limit: float, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} failed: no result after {limit:.0f} s: killed") from None


def loadbench_side(root: str, library: str, mode: str, device: str = "cuda", limit: float = 600.0
                   ) -> dict[str, float]:
    """A fresh interpreter running deserialize_benchmark.py, as a pod does."""
    with tempfile.TemporaryDirectory(prefix="fidelity-res-") as res:
        proc = _run(f"loadbench {library} {mode}",
                    [sys.executable, os.path.join(ROOT, "deserialize_benchmark.py")], limit,
                    _pod_env(root, library, mode, device, res))
    for line in proc.stdout.splitlines():
        if line.startswith(LOG_PREFIX):
            found = _timed(json.loads(line[len(LOG_PREFIX):]))
            if found:
                return {**found, "ppid": os.getpid()}  # its parent: this process
    raise RuntimeError(f"loadbench {library} {mode} failed: {proc.stderr.strip()[-300:]}")


def bare_side(root: str, library: str, mode: str, device: str = "cuda", limit: float = 600.0
              ) -> dict[str, float]:
    proc = _run(f"bare {library} {mode}", [sys.executable, __file__, "--model-path", root, "--device",
                                            device, "--one", library, mode], limit)
    if proc.returncode:
        raise RuntimeError(f"bare {library} {mode} failed: {proc.stderr.strip()[-300:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def loadbench_here(root: str, library: str, mode: str, device: str = "cuda") -> dict[str, float]:
    """loadbench's pod in this process (a forked child): the same entry point as
    deserialize_benchmark.py, its document read back from its results folder."""
    from loadbench import cli
    with tempfile.TemporaryDirectory(prefix="fidelity-res-") as res:
        os.environ.update(_pod_env(root, library, mode, device, res))
        code = cli.bench_main([], dict(os.environ))
        for path in glob.glob(os.path.join(res, "**", "*.json"), recursive=True):
            with open(path) as f:
                found = _timed(json.load(f))
            if found:
                return found
    raise RuntimeError(f"the pod exited {code} with no verified trial")


def _child(side: str, args: tuple[str, ...], conn: Any, log: str) -> None:
    """One sample in a forked child. Its prints go to `log`: the parent's output stays its own."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        import torch
        if torch.cuda._is_in_bad_fork():  # the server initialised CUDA: no child can use it
            raise SystemExit("the fork server initialised CUDA before forking; run with --start fresh")
        value = (loadbench_here if side == "loadbench" else bare)(*args)
        conn.send(("ok", {**value, "ppid": os.getppid()}))
    except BaseException as e:  # the parent reports it, with the child's log
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def _nothing() -> None:
    pass


def preload(root: str) -> list[str]:
    """What the fork server imports once: torch, transformers, the model's modeling code and
    loadbench's pod, none of which initialises a device at import (tests/unit/test_fidelity_libs).
    `import torch` leaves one native thread of its own in the server, as in any process that
    forks after it (a DataLoader's workers)."""
    names = ["torch", "transformers", "loadbench.cli", "loadbench.models", "loadbench.measure.run"]
    try:
        with open(os.path.join(root, "config.json")) as f:
            kind = str(json.load(f).get("model_type", "")).replace("-", "_")
        if kind.isidentifier():
            names.append(f"transformers.models.{kind}.modeling_{kind}")
    except (OSError, ValueError):
        pass  # the child imports it then, on both sides alike
    return names


class Forked:
    """Samples as children of one fork server (multiprocessing's forkserver), started here, so
    its imports are in no sample's time nor in the deadline's estimate of a sample's length."""

    def __init__(self, root: str, device: str) -> None:
        # The server is a new interpreter that takes this process's sys.path: it must find
        # loadbench and this module (by name, when imported rather than run), or it skips a
        # preload without a word and no child can unpickle its target.
        for folder in (ROOT, os.path.dirname(os.path.abspath(__file__))):
            if folder not in sys.path:
                sys.path.append(folder)
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload(root))
        self.device = device
        first = self.ctx.Process(target=_nothing)
        first.start()
        first.join()

    def sample(self, side: str, root: str, library: str, mode: str, limit: float = 600.0
               ) -> dict[str, Any]:
        """One sample; a child still running after `limit` seconds is killed and fails."""
        receive, send = self.ctx.Pipe(duplex=False)
        with tempfile.NamedTemporaryFile(prefix="fidelity-child-", suffix=".log") as log:
            proc = self.ctx.Process(target=_child, args=(side, (root, library, mode, self.device),
                                                         send, log.name))
            proc.start()
            send.close()
            status: str = "error"
            value: Any = f"no result after {limit:.0f} s: killed"
            if receive.poll(limit):
                try:
                    status, value = receive.recv()
                except EOFError:
                    value = "the child died without a result"
            proc.join(30 if status == "ok" else 0)
            if proc.is_alive():  # hung, or still exiting 30 s after its result (a library's thread)
                proc.kill()
                proc.join()
            receive.close()
            if status != "ok":
                with open(log.name, errors="replace") as f:
                    last = [line for line in f.read().splitlines() if line.strip()][-1:]
                said = "".join(f"\n  {line.strip()[-300:]}" for line in last)
                died = f" (exit {proc.exitcode})" if proc.exitcode else ""
                raise RuntimeError(f"{side} {library} {mode} failed{died}: {value}{said}")
        return dict(value)  # a child that sent its result and then exited badly: the load stands


def interval(a: list[float], b: list[float], n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of median(a) / median(b), resampling each side."""
    rng = random.Random(seed)
    return _middle95([statistics.median(rng.choices(a, k=len(a)))
                      / statistics.median(rng.choices(b, k=len(b))) for _ in range(n)])


def _middle95(resampled: list[float]) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the bootstrap's resampled statistics."""
    ordered, n = sorted(resampled), len(resampled)
    return ordered[int(0.025 * n)], ordered[int(0.975 * n) - 1]


Sample = dict[str, float]


def pairs(a: list[Sample], b: list[Sample]) -> list[tuple[Sample, Sample]]:
    """The two sides' samples of each round: matched by `round` (recorded since fidelity/3), or
    for older files by position where no sample failed (both sides as long); else none."""
    if all("round" in x for x in a + b):
        other = {x["round"]: x for x in b}
        return [(x, other[x["round"]]) for x in a if x["round"] in other]
    return list(zip(a, b)) if len(a) == len(b) else []


def paired_interval(ratios: list[float], n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the median of per-round ratios, resampling rounds."""
    rng = random.Random(seed)
    return _middle95([statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(n)])


def report(samples: dict[str, dict[str, list[dict[str, float]]]]) -> list[dict[str, Any]]:
    """Per library and mode: the ratio loadbench/bare of the weights phase (the target: within
    +-3%, its bootstrap interval inside +-5%), and of the total and skeleton, with n."""
    rows = []
    for key, s in samples.items():
        a, b = s["loadbench"], s["bare"]
        if len(a) < 2 or len(b) < 2:
            continue
        row: dict[str, Any] = {"library": key.split("|")[0], "mode": key.split("|")[1],
                               "n": min(len(a), len(b))}
        for phase in PHASES:
            xa, xb = [x[phase] for x in a], [x[phase] for x in b]
            name = phase.removesuffix("_s")
            row[f"loadbench_{name}_median_s"] = statistics.median(xa)
            row[f"bare_{name}_median_s"] = statistics.median(xb)
            if statistics.median(xb) > 0:
                row[f"{name}_ratio"] = statistics.median(xa) / statistics.median(xb)
                row[f"{name}_ci95"] = list(interval(xa, xb))
        row["ratio"], row["ci95"] = row.get("weights_ratio"), row.get("weights_ci95")
        row["within_3pct"] = row["ratio"] is not None and abs(row["ratio"] - 1) <= 0.03
        row["ci95_within_5pct"] = row["ci95"] is not None and 0.95 <= row["ci95"][0] <= row["ci95"][1] <= 1.05
        matched = [x["weights_s"] / y["weights_s"] for x, y in pairs(a, b) if y["weights_s"] > 0]
        row["pairs"] = len(matched)
        row["paired_ratio"] = statistics.median(matched) if len(matched) >= 2 else None
        row["paired_ci95"] = list(paired_interval(matched)) if len(matched) >= 2 else None
        row["paired_within_3pct"] = row["paired_ratio"] is not None and abs(row["paired_ratio"] - 1) <= 0.03
        row["paired_ci95_within_5pct"] = (row["paired_ci95"] is not None
                                          and 0.95 <= row["paired_ci95"][0] <= row["paired_ci95"][1] <= 1.05)
        rows.append(row)
    return rows


def save(path: str | None, samples: dict[str, Any], meta: dict[str, Any]) -> None:
    """Written after every sample (atomically), so a run killed at its deadline keeps what it
    measured."""
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**meta, "schema": "loadbench.fidelity/3", "samples": samples,
                   "ratios": report(samples)}, f, indent=1)
    os.replace(tmp, path)


# What a sample is, which every input of a merge must share, and what a file that predates a key
# did: `bare_to_device` (the bare side ended with model.to(device), as loadbench's loads do);
# `start` and `device` (files before the fork server ran fresh interpreters on CUDA).
SAME = {"start": "fresh", "it_backend": None, "device": "cuda", "bare_to_device": False}


def _setting(meta: dict[str, Any], key: str) -> Any:
    return meta.get(key, SAME[key])


def merge(paths: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(samples, meta) of fidelity files written by runs of this script. A cell may be in one
    file only: two runs of the same cell are two experiments, not one longer one."""
    samples: dict[str, Any] = {}
    metas = []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        if not str(doc.get("schema", "")).startswith("loadbench.fidelity/"):
            raise SystemExit(f"{path}: not a fidelity file (schema {doc.get('schema')!r})")
        for key, cell in doc["samples"].items():
            if key in samples:
                raise SystemExit(f"{path}: cell {key} is already in an earlier file; merge runs of "
                                 "different libraries or modes only")
            samples[key] = cell
        metas.append({k: v for k, v in doc.items() if k not in ("samples", "ratios")})
        for key in SAME:  # the merged file has one description: every input must fit it
            if _setting(metas[-1], key) != _setting(metas[0], key):
                raise SystemExit(f"{path}: {key} is {_setting(metas[-1], key)!r}, but "
                                 f"{_setting(metas[0], key)!r} in {paths[0]}; files measured "
                                 "differently are not merged into one")
    meta = dict(metas[0], merged_from=[os.path.basename(p) for p in paths])
    return samples, meta


def summary(samples: dict[str, Any]) -> None:
    for r in report(samples):
        if r["ratio"] is None:  # a bare weights phase of zero: nothing to divide by
            print(f"{r['library']:16} {r['mode']:5} n={r['n']}  no ratio", flush=True)
            continue
        paired = "no paired rounds"
        if r["paired_ratio"] is not None:
            paired = (f"paired {r['paired_ratio']:.3f} over {r['pairs']} rounds (95% CI "
                      f"{r['paired_ci95'][0]:.3f}-{r['paired_ci95'][1]:.3f}, inside +-5%: "
                      f"{'yes' if r['paired_ci95_within_5pct'] else 'no'})")
        print(f"{r['library']:16} {r['mode']:5} n={r['n']}  weights loadbench/bare = {r['ratio']:.3f} "
              f"(95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}, inside +-5%: "
              f"{'yes' if r['ci95_within_5pct'] else 'no'}); {paired}; total {r.get('total_ratio', 0.0):.3f}",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path")
    ap.add_argument("--merge", nargs="+", metavar="FILE",
                    help="put fidelity files of one machine together into --out (nothing is run)")
    ap.add_argument("--samples", type=int, default=7, help="samples per side per cell")
    ap.add_argument("--libraries", default=",".join(LIBS))
    ap.add_argument("--modes", default="warm,cold")
    ap.add_argument("--out", help="samples and ratios (JSON), rewritten after every sample")
    ap.add_argument("--deadline", type=float, default=1e9,
                    help="seconds for the whole run; a sample that could not finish is not started")
    ap.add_argument("--start", choices=("forkserver", "fresh"), default="forkserver",
                    help="each sample a child of a fork server that imported torch and transformers "
                         "once (default), or a new interpreter, as a pod (5-7 s more per sample)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu, for a try without a GPU")
    ap.add_argument("--one", nargs=2, metavar=("LIBRARY", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.merge:
        if not args.out:
            ap.error("--merge needs --out")
        merged, meta = merge(args.merge)
        save(args.out, merged, meta)
        summary(merged)
        return 0
    if not args.model_path:
        ap.error("--model-path is required (or --merge FILE ...)")
    if args.one:
        library, mode = args.one
        print(json.dumps(bare(args.model_path, library, mode, device=args.device)))
        return 0
    unknown = set(args.libraries.split(",")) - set(LIBS)
    if unknown:
        ap.error(f"--libraries: {', '.join(sorted(unknown))} not in {', '.join(LIBS)}")
    end = time.monotonic() + args.deadline
    how = ("a child of a fork server that imported torch, transformers and the modeling code once"
           if args.start == "forkserver" else "a new interpreter")
    meta = {"model_path": args.model_path, "it_backend": os.environ.get("IT_BACKEND"),
            "start": args.start, "device": args.device, "bare_to_device": True, "pid": os.getpid(),
            "rule": f"ratio = median(loadbench weights_s) / median(bare weights_s), each side "
                    "resampled on its own; paired_ratio = median over rounds of loadbench weights_s / "
                    f"bare weights_s, the rounds resampled; each sample {how}, loading once; "
                    "interleaved ABBA; bootstrap 95% intervals, 5000 resamples"}
    forked = Forked(args.model_path, args.device) if args.start == "forkserver" else None

    def sample(side: str, root: str, library: str, mode: str, limit: float) -> dict[str, Any]:
        if forked is not None:
            return forked.sample(side, root, library, mode, limit)
        return (loadbench_side if side == "loadbench" else bare_side)(root, library, mode, args.device, limit)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {}
    longest: dict[str, float] = {}  # the longest pair of each cell so far: what a sample may need
    for i in range(args.samples):  # round-robin: a deadline leaves every cell with equal samples
        for mode in args.modes.split(","):
            for lib in args.libraries.split(","):
                key = f"{lib}|{mode}"
                if time.monotonic() + 1.2 * longest.get(key, 0.0) > end:
                    print(f"deadline: {key} sample {i + 1} not started", flush=True)
                    continue
                cell = samples.setdefault(key, {"loadbench": [], "bare": []})
                order = ["loadbench", "bare"]
                if i % 2:
                    order.reverse()  # ABBA: neither side always goes first
                t0 = time.monotonic()
                for side in order:
                    # A hung sample is killed: at 3x the cell's longest pair so far (10 minutes
                    # before the first), and never past the deadline by more than a minute.
                    limit = max(60.0, min(end - time.monotonic(), 3 * longest.get(key, 200.0)))
                    try:
                        cell[side].append({**sample(side, args.model_path, lib, mode, limit), "round": i})
                    except (RuntimeError, EOFError, OSError) as e:  # OSError, EOFError: the server died
                        print(f"{e}" if isinstance(e, RuntimeError) else f"{side} {lib} {mode} failed: "
                              f"{type(e).__name__}: {e}", flush=True)
                longest[key] = max(longest.get(key, 0.0), time.monotonic() - t0)
                save(args.out, samples, meta)
                print(f"{mode} {lib} sample {i + 1}: loadbench {cell['loadbench'][-1:]} "
                      f"bare {cell['bare'][-1:]}", flush=True)
    save(args.out, samples, meta)
    summary(samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
