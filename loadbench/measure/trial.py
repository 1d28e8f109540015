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
from typing import Any, Mapping

import torch

from loadbench import machine, models
from loadbench.errors import one_line
from loadbench.loaders.context import LoadContext, Remote
from loadbench.measure import checksums
from loadbench.measure.document import error_info, now, where
from loadbench.schema.result import TRIAL_KEYS
from loadbench.storage import cache, ceilings
from loadbench.storage.checkpoint import Checkpoint
from loadbench.terminal import logger

PROMPT = "The quickest way to move a model from storage to a GPU is"
FALLBACK_IDS = [2, 133, 2119, 169, 7, 517, 10, 1421, 31, 2166, 7, 10, 22858, 16]


log = logger("loadbench")


def _prompt_ids(ckpt: Checkpoint, vocab_size: int, device: torch.device) -> torch.Tensor:
    """The checkpoint's tokenizer on a fixed prompt, else fixed token ids."""
    ids = None
    if os.path.exists(os.path.join(ckpt.root, "tokenizer_config.json")):
        from transformers import AutoTokenizer
        ids = AutoTokenizer.from_pretrained(ckpt.root)(PROMPT)["input_ids"]
    if not ids:
        ids = [i % vocab_size for i in FALLBACK_IDS]
    return torch.tensor([ids], device=device)


def _generate(model: Any, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    kwargs = dict(do_sample=False, attention_mask=torch.ones_like(ids),
                  pad_token_id=model.config.eos_token_id or 0)
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
    models.synchronize(ids.device)
    return out, time.perf_counter() - start


@torch.no_grad()
def first_token(model: Any, ids: torch.Tensor) -> float:
    """Seconds to the first generated token right after the load, nothing warmed:
    with the load, what a user waits for before the model answers."""
    return _generate(model, ids, 1)[1]


@torch.no_grad()
def generate(model: Any, ids: torch.Tensor, new_tokens: int, runs: int) -> dict[str, Any]:
    """Greedy tokens/s: the median of `runs` timed generations after a warm-up."""
    _generate(model, ids, 2)
    times: list[float] = []
    out = ids
    for _ in range(runs):
        out, seconds = _generate(model, ids, new_tokens)
        times.append(seconds)
    rates = [new_tokens / t for t in times]
    return {"tokens_per_s": statistics.median(rates), "tokens_per_s_runs": rates,
            "inference_s": sum(times), "output_ids": out[0, ids.shape[1]:].tolist()}


def release(device: torch.device, collect: bool = True) -> None:
    """Before a load: free what earlier loads of this process left, and restart the device's
    peak. `collect=False` for a process's first load, which has nothing to free: a full
    collection walks every object transformers and torch created (0.2-0.4 s a pass)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        if collect:
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def new_trial(mode: str, index_in_process: int | None = None) -> dict[str, Any]:
    trial: dict[str, Any] = {k: None for k in TRIAL_KEYS if k != "ranks"}
    trial.update(status="ok", cache_mode=mode, mismatches=[], tensors_verified=0, warnings=[],
                 index_in_process=index_in_process)
    return trial


def prepare_cache(mode: str, files: list[str], record: dict[str, Any]) -> float:
    """Bring the files into the asked page-cache state; record the time, residency and any
    warning in `record`; return the measured residency."""
    t0 = time.perf_counter()
    resident = cache.prepare(mode, files, log)
    record["cache_s"] = time.perf_counter() - t0
    warning = cache.check(mode, resident)
    if warning:
        log("WARNING: " + warning)
        record["warnings"].append(warning)
    return resident


class TimedLoad:
    """The clock around one load: peak RSS, the bytes the process read, device synchronized
    before the clock stops. A failure inside is kept, not raised, so a rank can still meet
    its peers at the barrier."""

    def __init__(self, ctx: LoadContext) -> None:
        self.ctx = ctx
        self.model: Any = None
        self.failure: Exception | None = None

    def run(self, load: Any, *args: Any) -> TimedLoad:
        device = self.ctx.device
        self.started_at = now()
        io = machine.io_counters()
        with machine.PeakRSS() as rss:
            self.start = time.perf_counter()
            try:
                self.model = load(self.ctx, *args)
                models.synchronize(device)
            except Exception as e:
                self.failure = e
            self.end = time.perf_counter()
        self.io = machine.io_delta(io)
        self.rss = rss
        return self

    def times(self) -> dict[str, Any]:
        downloaded_at = self.ctx.marks.get("download")
        begin = downloaded_at or self.start  # the load proper starts after a download
        skeleton_at = self.ctx.marks.get("skeleton")
        device = self.ctx.device
        return dict(total_s=self.end - self.start,
                    download_s=(downloaded_at - self.start) if downloaded_at else None,
                    skeleton_s=(skeleton_at - begin) if skeleton_at else None,
                    weights_s=self.end - (skeleton_at or begin),
                    peak_rss_bytes=self.rss.peak, peak_rss_method=self.rss.method,
                    peak_device_bytes=torch.cuda.max_memory_allocated(device)
                    if device.type == "cuda" else None, **self.io)


def grade(record: dict[str, Any], name: str | None, limit: float | None) -> None:
    """Put the load's rate against a ceiling; a ceiling beaten by more than the margin is
    flagged unreliable, never shown as a limit."""
    if not limit or not record.get("gbps"):
        return
    fraction = record["gbps"] / limit
    record.update(ceiling=name, ceiling_gbps=limit, ceiling_fraction=fraction,
                  ceiling_beaten=fraction > 1 + ceilings.BEATEN_MARGIN)
    if record["ceiling_beaten"]:
        record["warnings"].append(
            f"this load ran at {fraction:.0%} of the {name} ceiling ({limit:.2f} GB/s): that "
            f"ceiling is unreliable and is flagged, not shown as a limit")


def verify_into(record: dict[str, Any], state: dict[str, torch.Tensor], expected: Mapping[str, Any],
                device: torch.device, who: str = "") -> None:
    """Check every tensor against the manifest, outside the clock; a mismatch marks the record."""
    t0 = time.perf_counter()
    verified, mismatches = checksums.verify(state, expected, device)
    record.update(verify_s=time.perf_counter() - t0, tensors_verified=verified, mismatches=mismatches)
    if mismatches:
        record["status"] = "mismatch"
        log(f"{who}{len(mismatches)} tensor(s) do not match the manifest, first: "
            f"{mismatches[0]['tensor']}: {mismatches[0]['problem']}")


def run_trial(mod: Any, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype,
              options: dict[str, Any], mode: str, measured: dict[str, Any] | None,
              inference: tuple[int, int] | None, index_in_process: int | None = None,
              source: Any = None, remote: Remote | None = None) -> tuple[dict[str, Any], LoadContext]:
    """One load, checked. `inference` is (new tokens, runs), or None to skip it. With an
    object-storage `source`, the download is inside the clock, marked as its own phase; with
    a `remote`, the library reads object storage itself (its load_s3) and nothing is local.
    What the load left is freed before the next one (or by the process's exit), not after it."""
    release(device, collect=index_in_process != 0)
    trial = new_trial(mode, index_in_process)
    if remote is not None:
        files: list[str] = []
    else:
        files = source.local_files(ckpt) if source is not None else ckpt.weight_files
    resident = prepare_cache(mode, files, trial) if files else 0.0  # nothing local yet
    trial["resident_before"] = resident
    ctx = LoadContext(ckpt, device, dtype, options, remote=remote)

    def fetch_then_load(ctx: LoadContext) -> Any:
        if ctx.remote is not None:
            return mod.load_s3(ctx)
        got = source.fetch(ctx.checkpoint) if source is not None else None
        if got is not None:
            ctx.checkpoint, ctx.info["fetch"] = got
            ctx.mark("download")
        return mod.load(ctx)

    load = TimedLoad(ctx).run(fetch_then_load)
    trial["started_at"] = load.started_at
    if load.failure is not None:
        trial["finished_at"] = now()
        trial.update(status="error", error=error_info(load.failure, where(load.failure)))
        log(f"load failed: {one_line(load.failure)}")
        return trial, ctx
    model = load.model
    trial["library_info"] = ctx.info
    trial.update(load.times())
    trial["gbps"] = ckpt.manifest["model"]["bytes"] / trial["total_s"] / 1e9
    # read the bucket inside this load: natively, or a download (a node cache filled or waited
    # for included); a node-cache hit read local files, graded as any local load
    fetched = (ctx.info.get("fetch") or {}).get("role")
    remote_read = ctx.remote is not None or ("download" in ctx.marks and fetched != "hit")
    grade(trial, *ceilings.bound(measured, resident, "s3" if remote_read else "local"))
    try:
        # The prompt is tokenized once per trial (the tokenizer is read from disk).
        ids = _prompt_ids(ckpt, model.config.vocab_size, device) if inference else None
        if ids is not None:
            trial["first_token_s"] = first_token(model, ids)
        state = models.state(model)
        trial["device_copy_bytes"] = sum(v.numel() * v.element_size() for v in
                                         {id(v): v for v in state.values()}.values())
        verify_into(trial, state, ckpt.tensors, device)
        del state
        if trial["status"] == "ok" and inference and ids is not None:
            trial.update(generate(model, ids, *inference))
    except Exception as e:
        trial.update(status="error", error=error_info(e, where(e)))
        log(f"after the load: {one_line(e)}")
    trial["finished_at"] = now()
    del model, load
    return trial, ctx


def line(label: str, i: int, n: int, t: dict[str, Any]) -> str:
    """The progress line a trial prints."""
    if t["total_s"] is None:
        return f"{label} trial {i + 1}/{n}: {t['status']}"
    frac = f", {t['ceiling_fraction']:.0%} of {t['ceiling']}" if t.get("ceiling_fraction") else ""
    ttft = f", first token {t['first_token_s']:.3f} s" if t.get("first_token_s") else ""
    return (f"{label} trial {i + 1}/{n}: {t['status']}, {t['total_s']:.3f} s, {t['gbps']:.2f} GB/s{frac}, "
            f"resident before {t['resident_before']:.0%}, verified {t['tensors_verified']} tensors in "
            f"{t.get('verify_s') or 0:.3f} s{ttft}")
