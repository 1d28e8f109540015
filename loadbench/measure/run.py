"""Deserialization benchmark: what one pod does, start to finish.

For each library (and each value of its tuning sweep), for each trial:
bring the page cache into the asked state and measure it, time skeleton +
weights until the device is synchronized, then (outside the timed region)
verify every tensor against the manifest, optionally generate tokens, and
record memory peaks. One result document per library, written atomically
and echoed as one `LOADBENCH_RESULT` line.

Exit codes: 0 all trials ok; 1 a trial failed (retryable); 2 bad
configuration or input that no retry can fix.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from typing import Any, Callable

import torch

from loadbench import cache, ceilings, checksums, environment, libraries, models, report, results, stats
from loadbench import settings as settings_mod
from loadbench.storage.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from loadbench.loaders.context import LoadContext
from loadbench.models import ModelError
from loadbench.settings import ConfigError

EXIT_OK, EXIT_TRIAL_FAILED, EXIT_BAD_INPUT = 0, 1, 2
BAD_INPUT = (ConfigError, CheckpointError, ModelError, libraries.NotInstalled)
PROMPT = "The quickest way to move a model from storage to a GPU is"
FALLBACK_IDS = [2, 133, 2119, 169, 7, 517, 10, 1421, 31, 2166, 7, 10, 22858, 16]


def log(message: str) -> None:
    print(f"loadbench: {message}", file=sys.stderr, flush=True)


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


@torch.no_grad()
def generate(model: torch.nn.Module, ckpt: Checkpoint, device: torch.device, new_tokens: int
             ) -> dict[str, Any]:
    """Greedy tokens/s after a short warm-up, and the ids, to compare libraries."""
    input_ids = _prompt_ids(ckpt, model.config.vocab_size, device)
    kwargs = dict(do_sample=False, attention_mask=torch.ones_like(input_ids),
                  pad_token_id=model.config.eos_token_id or 0)
    model.generate(input_ids, max_new_tokens=2, min_new_tokens=2, **kwargs)
    models.synchronize(device)
    start = time.perf_counter()
    out = model.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    models.synchronize(device)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": new_tokens / seconds, "inference_s": seconds,
            "output_ids": out[0, input_ids.shape[1]:].tolist()}


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_trial(mod: Any, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype,
              tuning: dict[str, Any], cfg: dict[str, Any], measured: dict[str, Any] | None
              ) -> dict[str, Any]:
    _release(device)
    mode = cfg["CACHE_MODE"]
    resident = cache.prepare(mode, ckpt.weight_files)
    trial: dict[str, Any] = {k: None for k in results.TRIAL_KEYS}
    trial.update(status="ok", cache_mode=mode, resident_before=resident, mismatches=[],
                 tensors_verified=0, warnings=[], verify_s=None, tokens_per_s=None,
                 output_ids=None)
    warning = cache.check(mode, resident)
    if warning:
        log("WARNING: " + warning)
        trial["warnings"].append(warning)
    ctx = LoadContext(ckpt, device, dtype, tuning, cfg)
    model = None
    trial["started_at"] = results.now()
    try:
        with environment.PeakRSS() as rss:
            start = time.perf_counter()
            model = mod.load(ctx)
            models.synchronize(device)
            end = time.perf_counter()
    except Exception as e:
        trial["finished_at"] = results.now()
        trial.update(status="error", error=results.error_info(e, where(e)))
        log(f"{mod.NAME}: load failed: {type(e).__name__}: {e}")
        return trial
    trial["library_info"] = ctx.info
    skeleton_at = ctx.marks.get("skeleton")
    total = end - start
    nbytes = ckpt.manifest["model"]["bytes"]
    trial.update(
        skeleton_s=(skeleton_at - start) if skeleton_at else None,
        weights_s=end - (skeleton_at or start), total_s=total, gbps=nbytes / total / 1e9,
        peak_rss_bytes=rss.peak,
        peak_device_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)
    name, limit = ceilings.bound(measured, resident)
    if limit:
        trial.update(ceiling=name, ceiling_gbps=limit, ceiling_fraction=trial["gbps"] / limit)

    verify_start = time.perf_counter()
    verified, mismatches = checksums.verify(models.state(model), ckpt.tensors, device)
    trial["verify_s"] = time.perf_counter() - verify_start
    trial.update(tensors_verified=verified, mismatches=mismatches)
    if mismatches:
        trial["status"] = "mismatch"
        log(f"{mod.NAME}: {len(mismatches)} tensor(s) do not match the manifest, first: "
            f"{mismatches[0]['tensor']}: {mismatches[0]['problem']}")
    elif not cfg["SKIP_INFERENCE"]:
        try:
            trial.update(generate(model, ckpt, device, cfg["MAX_NEW_TOKENS"]))
        except Exception as e:
            trial.update(status="error", error=results.error_info(e, where(e)))
            log(f"{mod.NAME}: inference failed: {type(e).__name__}: {e}")
    trial["finished_at"] = results.now()
    del model
    _release(device)
    return trial


def run_library(lib: str, tuning: dict[str, Any], cfg: dict[str, Any], device: torch.device,
                shared: dict[str, Any], progress: Callable[[str], None]) -> tuple[dict, int]:
    label = settings_mod.label(lib, tuning)
    doc = results.new_document(lib, label, tuning, cfg)
    try:
        mod = libraries.require(lib)
        doc["versions"] = environment.versions(mod.PACKAGE)
        ckpt = open_checkpoint(cfg["MODEL_PATH"], mod.FORMAT, cfg["MODEL_ID"], cfg["DTYPE"])
        doc["model"] = dict(ckpt.manifest["model"], format=mod.FORMAT,
                            file_bytes=ckpt.bytes, files=len(ckpt.files))
        doc["device"] = environment.device_info(device)
        if cfg["CEILINGS"] and "ceilings" not in shared:
            shared["ceilings"] = ceilings.measure(ckpt.weight_files, device,
                                                  cfg["CEILING_SECONDS"], progress)
        doc["ceilings"] = shared.get("ceilings")
        dtype = models.DTYPES[cfg["DTYPE"]]
        # Import the architecture's modeling code once, untimed: the first
        # library would otherwise pay for every library's imports.
        models.skeleton(LoadContext(ckpt, device, dtype, tuning, cfg).config, dtype)
        code = EXIT_OK
        for i in range(cfg["NUM_TRIALS"]):
            trial = run_trial(mod, ckpt, device, dtype, tuning, cfg, doc["ceilings"])
            doc["trials"].append(trial)
            doc["warnings"].extend(trial.get("warnings", []))
            progress(_trial_line(label, i, cfg["NUM_TRIALS"], trial))
            if trial["status"] != "ok":
                code = EXIT_TRIAL_FAILED
        if code:
            bad = [t for t in doc["trials"] if t["status"] != "ok"]
            doc["status"] = "error"
            doc["error"] = {"type": "TrialFailed", "where": "trials",
                            "message": f"{len(bad)} of {len(doc['trials'])} trial(s) failed; "
                                       f"first: {_trial_problem(bad[0])}"}
    except BAD_INPUT as e:
        results.fail(doc, e, where(e))
        log(f"{label}: {e}")
        code = EXIT_BAD_INPUT
    except Exception as e:
        results.fail(doc, e, where(e))
        log(f"{label}: unexpected {type(e).__name__}: {e} (at {where(e)})")
        code = EXIT_TRIAL_FAILED
    doc["finished_at"] = results.now()
    return doc, code


def _trial_problem(trial: dict[str, Any]) -> str:
    """What went wrong in a failed trial, in one line."""
    if trial["status"] == "mismatch":
        m = trial["mismatches"]
        return (f"{len(m)} tensor(s) differ from the manifest, e.g. {m[0]['tensor']}: "
                f"{m[0]['problem']}")
    e = trial.get("error") or {}
    return f"{e.get('type')}: {e.get('message')} (at {e.get('where')})"


def _trial_line(label: str, i: int, n: int, t: dict[str, Any]) -> str:
    if t["total_s"] is None:
        return f"{label} trial {i + 1}/{n}: {t['status']}"
    frac = f", {t['ceiling_fraction']:.0%} of {t['ceiling']}" if t.get("ceiling_fraction") else ""
    return (f"{label} trial {i + 1}/{n}: {t['status']}, {t['total_s']:.3f} s, "
            f"{t['gbps']:.2f} GB/s{frac}, resident before {t['resident_before']:.0%}, "
            f"verified {t['tensors_verified']} tensors in {t.get('verify_s') or 0:.3f} s")


def summary_table(docs: list[dict[str, Any]]) -> str:
    rows = [("library", "trials ok", "median total s", "GB/s", "verified")]
    for doc in docs:
        ok = [t for t in doc["trials"] if t["status"] == "ok"]
        totals = sorted(t["total_s"] for t in ok)
        med = stats.percentile(totals, 50) if totals else None
        gbps = doc["model"]["bytes"] / med / 1e9 if med and doc.get("model") else None
        verified = "yes" if ok and len(ok) == len(doc["trials"]) else (
            doc["error"]["message"][:40] if doc.get("error") else "no")
        rows.append((doc["label"], f"{len(ok)}/{len(doc['trials'])}",
                     f"{med:.3f}" if med else "-", f"{gbps:.2f}" if gbps else "-", verified))
    return report.text_table(rows)


def config_error_document(exc: BaseException, environ: dict[str, str]) -> dict[str, Any]:
    cfg = {k: environ.get(k) for k in settings_mod.BY_NAME if k in environ}
    cfg.setdefault("RUN_ID", environ.get("RUN_ID") or "config-error")
    doc = results.new_document("none", "config-error", {}, cfg)
    return results.fail(doc, exc, "settings")


def emit(doc: dict[str, Any], res_path: str | None) -> None:
    print(results.log_line(doc), flush=True)
    if res_path:
        try:
            path = results.write(doc, res_path)
            log(f"wrote {path}")
        except OSError as e:
            log(f"could not write the result document under RES_PATH={res_path!r}: {e}")


def main(environ: dict[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    try:
        cfg = settings_mod.load(env)
        device = environment.resolve_device(cfg["DEVICE"])
    except ConfigError as e:
        emit(config_error_document(e, env), env.get("RES_PATH") or "./results")
        log(f"configuration error: {e}")  # the last line: what was wrong and where
        return EXIT_BAD_INPUT
    values = cfg.as_dict()
    values["DEVICE_RESOLVED"] = str(device)
    environment.init_device(device)
    log(f"run {values['RUN_ID']}: {values['MODEL_ID']} from {values['MODEL_PATH']} on {device}, "
        f"{values['CACHE_MODE']}, {values['NUM_TRIALS']} trial(s) each of "
        f"{', '.join(settings_mod.label(lib, t) for lib, t in settings_mod.variants(cfg))}")
    shared: dict[str, Any] = {}
    docs, code = [], EXIT_OK
    for lib, tuning in settings_mod.variants(cfg):
        doc, lib_code = run_library(lib, tuning, values, device, shared, log)
        emit(doc, values["RES_PATH"])
        docs.append(doc)
        code = max(code, lib_code)
    print("\n" + summary_table(docs), file=sys.stderr, flush=True)
    failed = [d for d in docs if d["status"] != "ok"]
    if failed:  # the last line names what went wrong, not a table row
        e = failed[0]["error"] or {}
        log(f"{len(failed)} of {len(docs)} failed; {failed[0]['label']}: {e.get('message')} "
            f"(exit {code})")
    return code
