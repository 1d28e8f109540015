"""One trial: cache state, the timed load, verification, inference, memory peaks.

Timed: skeleton + weights, until the device is synchronized. Everything else
(cache preparation, verification, inference) is outside the clock but is
recorded, so a pod's whole time can be accounted for.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import traceback
from typing import Any

import torch

from loadbench import machine, models
from loadbench.loaders.context import LoadContext
from loadbench.measure import checksums
from loadbench.measure.document import error_info, now
from loadbench.schema.result import TRIAL_KEYS
from loadbench.storage import cache, ceilings
from loadbench.storage.checkpoint import Checkpoint
from loadbench.terminal import logger

PROMPT = "The quickest way to move a model from storage to a GPU is"
FALLBACK_IDS = [2, 133, 2119, 169, 7, 517, 10, 1421, 31, 2166, 7, 10, 22858, 16]


log = logger("loadbench")


def where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"


def _prompt_ids(ckpt: Checkpoint, vocab_size: int, device: torch.device) -> torch.Tensor:
    """The checkpoint's tokenizer on a fixed prompt, else fixed token ids."""
    ids = None
    if os.path.exists(os.path.join(ckpt.root, "tokenizer_config.json")):
        from transformers import AutoTokenizer
        ids = AutoTokenizer.from_pretrained(ckpt.root)(PROMPT)["input_ids"]
    if not ids:
        ids = [i % vocab_size for i in FALLBACK_IDS]
    return torch.tensor([ids], device=device)


def _generate(model: torch.nn.Module, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    kwargs = dict(do_sample=False, attention_mask=torch.ones_like(ids),
                  pad_token_id=model.config.eos_token_id or 0)
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
    models.synchronize(ids.device)
    return out, time.perf_counter() - start


@torch.no_grad()
def first_token(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Seconds to the first generated token right after the load, nothing warmed:
    with the load, what a user waits for before the model answers."""
    return _generate(model, ids, 1)[1]


@torch.no_grad()
def generate(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int, runs: int) -> dict[str, Any]:
    """Greedy tokens/s: the median of `runs` timed generations after a warm-up."""
    _generate(model, ids, 2)
    times, out = [], None
    for _ in range(runs):
        out, seconds = _generate(model, ids, new_tokens)
        times.append(seconds)
    rates = [new_tokens / t for t in times]
    return {"tokens_per_s": statistics.median(rates), "tokens_per_s_runs": rates,
            "inference_s": sum(times), "output_ids": out[0, ids.shape[1]:].tolist()}


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def new_trial(mode: str) -> dict[str, Any]:
    trial: dict[str, Any] = {k: None for k in TRIAL_KEYS}
    trial.update(status="ok", cache_mode=mode, mismatches=[], tensors_verified=0, warnings=[])
    return trial


def run_trial(mod: Any, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype,
              options: dict[str, Any], mode: str, measured: dict[str, Any] | None,
              inference: tuple[int, int] | None) -> tuple[dict[str, Any], LoadContext]:
    """One load, checked. `inference` is (new tokens, runs), or None to skip it."""
    release(device)
    trial = new_trial(mode)
    t0 = time.perf_counter()
    resident = cache.prepare(mode, ckpt.weight_files, log)
    trial["cache_s"] = time.perf_counter() - t0
    trial["resident_before"] = resident
    warning = cache.check(mode, resident)
    if warning:
        log("WARNING: " + warning)
        trial["warnings"].append(warning)
    ctx = LoadContext(ckpt, device, dtype, options)
    model = None
    trial["started_at"] = now()
    try:
        with machine.PeakRSS() as rss:
            start = time.perf_counter()
            model = mod.load(ctx)
            models.synchronize(device)
            end = time.perf_counter()
    except Exception as e:
        trial["finished_at"] = now()
        trial.update(status="error", error=error_info(e, where(e)))
        log(f"load failed: {type(e).__name__}: {' '.join(str(e).split())}")
        return trial, ctx
    trial["library_info"] = ctx.info
    skeleton_at = ctx.marks.get("skeleton")
    total = end - start
    nbytes = ckpt.manifest["model"]["bytes"]
    trial.update(
        skeleton_s=(skeleton_at - start) if skeleton_at else None,
        weights_s=end - (skeleton_at or start), total_s=total, gbps=nbytes / total / 1e9,
        peak_rss_bytes=rss.peak, peak_rss_method=rss.method,
        peak_device_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)
    name, limit = ceilings.bound(measured, resident)
    if limit:
        fraction = trial["gbps"] / limit
        trial.update(ceiling=name, ceiling_gbps=limit, ceiling_fraction=fraction,
                     ceiling_beaten=fraction > 1 + ceilings.BEATEN_MARGIN)
        if trial["ceiling_beaten"]:
            trial["warnings"].append(
                f"this load ran at {fraction:.0%} of the {name} ceiling ({limit:.2f} GB/s): that "
                f"ceiling is unreliable and is flagged, not shown as a limit")

    try:
        # The prompt is tokenized once per trial (the tokenizer is read from disk).
        ids = _prompt_ids(ckpt, model.config.vocab_size, device) if inference else None
        if ids is not None:
            trial["first_token_s"] = first_token(model, ids)
        verify_start = time.perf_counter()
        verified, mismatches = checksums.verify(models.state(model), ckpt.tensors, device)
        trial["verify_s"] = time.perf_counter() - verify_start
        trial.update(tensors_verified=verified, mismatches=mismatches)
        if mismatches:
            trial["status"] = "mismatch"
            log(f"{len(mismatches)} tensor(s) do not match the manifest, first: "
                f"{mismatches[0]['tensor']}: {mismatches[0]['problem']}")
        elif inference:
            trial.update(generate(model, ids, *inference))
    except Exception as e:
        trial.update(status="error", error=error_info(e, where(e)))
        log(f"after the load: {type(e).__name__}: {' '.join(str(e).split())}")
    trial["finished_at"] = now()
    del model
    release(device)
    return trial, ctx


def problem(trial: dict[str, Any]) -> str:
    """What went wrong in a failed trial, in one line."""
    if trial["status"] == "mismatch":
        m = trial["mismatches"]
        return f"{len(m)} tensor(s) differ from the manifest, e.g. {m[0]['tensor']}: {m[0]['problem']}"
    e = trial.get("error") or {}
    return f"{e.get('type')}: {e.get('message')} (at {e.get('where')})"


def line(label: str, i: int, n: int, t: dict[str, Any]) -> str:
    """The progress line a trial prints."""
    if t["total_s"] is None:
        return f"{label} trial {i + 1}/{n}: {t['status']}"
    frac = f", {t['ceiling_fraction']:.0%} of {t['ceiling']}" if t.get("ceiling_fraction") else ""
    ttft = f", first token {t['first_token_s']:.3f} s" if t.get("first_token_s") else ""
    return (f"{label} trial {i + 1}/{n}: {t['status']}, {t['total_s']:.3f} s, {t['gbps']:.2f} GB/s{frac}, "
            f"resident before {t['resident_before']:.0%}, verified {t['tensors_verified']} tensors in "
            f"{t.get('verify_s') or 0:.3f} s{ttft}")
