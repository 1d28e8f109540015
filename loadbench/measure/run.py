"""One pod's run, start to finish: what deserialize_benchmark.py does.

For each library variant, for each trial (measure/trial.py): cache state,
timed load, verification, inference. One result document per variant,
written exclusively and atomically and echoed as one `LOADBENCH_RESULT` line
where logs are collected. The pod's whole time is accounted for: process
start, imports, device init, ceilings (measured or reused), then per
library its preparation, trials and writing.

Exit codes (errors.py): 0 all trials ok; 1 a trial failed (retryable); 2 bad
configuration or input no retry can fix; 3 transient; 4 a result document
could not be written; 128+N terminated by signal N, after an error document
saying during which trial.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Callable

import torch

from loadbench import config, loaders, machine, models
from loadbench.config.settings import valid_run_id
from loadbench.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_NOT_WRITTEN,
    EXIT_OK,
    EXIT_TRANSIENT,
    BadInput,
    ConfigError,
    NeedsCUDA,
    Transient,
    one_line,
)
from loadbench.loaders.context import LoadContext
from loadbench.measure import document, trial
from loadbench.measure.document import fail, now
from loadbench.storage import ceilings
from loadbench.storage.checkpoint import open_checkpoint
from loadbench.terminal import median_rate, text_table

log = trial.log


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived: finish the document in flight, then exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


class Pod:
    """The pod's clock: phases since the process started, shared by its documents."""

    def __init__(self) -> None:
        self.started = machine.process_started_at()
        self.phases: list[dict[str, Any]] = [
            {"name": "startup and imports", "seconds": max(0.0, time.time() - self.started)}]
        self._t = time.perf_counter()

    def phase(self, name: str) -> None:
        """Close the phase that ran since the last call, under `name`."""
        t = time.perf_counter()
        self.phases.append({"name": name, "seconds": t - self._t})
        self._t = t

    def record(self, own: list[dict[str, Any]]) -> dict[str, Any]:
        from datetime import datetime, timezone
        return {"process_started_at": datetime.fromtimestamp(self.started, timezone.utc).isoformat(),
                "phases": self.phases + own, "total_s": max(0.0, time.time() - self.started)}


def node_ceilings(cfg: config.Settings, paths: list[str], device: torch.device,
                  shared: dict[str, Any]) -> dict[str, Any] | None:
    if cfg.ceilings == "off":
        return None
    if "ceilings" not in shared:
        if cfg.ceilings == "measure":
            shared["ceilings"] = dict(ceilings.measure(paths, device, cfg.ceiling_seconds, log),
                                      source="measured")
        else:
            node = cfg.identity.get("NODE_NAME") or machine.identity({})["node"]
            shared["ceilings"] = ceilings.for_node(cfg.res_path, cfg.run_id, node, paths, device,
                                                   cfg.ceiling_seconds, log)
    return shared["ceilings"]


def library_document(lib: str, options: dict[str, Any], cfg: config.Settings, device: torch.device
                     ) -> dict[str, Any]:
    """A new document for one library variant (never raises: failures go into it)."""
    doc = document.new_document(lib, config.label(lib, options), options, cfg)
    doc["settings"]["DEVICE_RESOLVED"] = str(device)
    return doc


def require(lib: str, cfg: config.Settings, device: torch.device, doc: dict[str, Any]) -> Any:
    """The library's module, imported, with versions and device recorded; bad input raises."""
    mod = loaders.require(lib)
    doc["versions"] = machine.versions()
    doc["device"] = machine.device_info(device)
    if loaders.get(lib).needs_cuda and device.type != "cuda":
        raise NeedsCUDA(f"library {lib!r} needs CUDA: it loads only onto CUDA devices, and "
                        f"DEVICE={cfg.device} resolved to {device}; run it on a GPU node or drop "
                        f"it from LIBRARIES")
    return mod


def run_library(lib: str, options: dict[str, Any], cfg: config.Settings, device: torch.device,
                shared: dict[str, Any], pod: Pod) -> tuple[dict[str, Any], int]:
    doc = library_document(lib, options, cfg, device)
    label, spec = doc["label"], loaders.get(lib)
    own: list[dict[str, Any]] = []
    t = time.perf_counter()
    done = 0
    try:
        mod = require(lib, cfg, device, doc)
        ckpt = open_checkpoint(cfg.model_path, spec.format, cfg.model_id, cfg.dtype)
        doc["model"] = dict(ckpt.manifest["model"], format=spec.format, file_bytes=ckpt.bytes,
                            files=len(ckpt.files))
        before = time.perf_counter()
        doc["ceilings"] = node_ceilings(cfg, ckpt.weight_files, device, shared)
        if doc["ceilings"] is not None and "ceilings_s" not in shared:
            shared["ceilings_s"] = time.perf_counter() - before
            own.append({"name": "ceilings", "seconds": shared["ceilings_s"]})
        dtype = models.DTYPES[cfg.dtype]
        # Import the architecture's modeling code once per pod, untimed: the first
        # library would otherwise pay for every library's imports.
        if "warmed" not in shared:
            models.skeleton(LoadContext(ckpt, device, dtype, options).config, dtype)
            shared["warmed"] = True
        own.append({"name": "prepare", "seconds": time.perf_counter() - t
                    - sum(p["seconds"] for p in own)})
        inference = None if cfg.skip_inference else (cfg.max_new_tokens, cfg.inference_runs)
        code = EXIT_OK
        t = time.perf_counter()
        for i in range(cfg.num_trials):
            one, ctx = trial.run_trial(mod, ckpt, device, dtype, options, cfg.cache_mode,
                                       doc["ceilings"], inference)
            doc["trials"].append(one)
            done = i + 1
            doc["io_mode"] = ctx.io_mode or doc["io_mode"]
            doc["warnings"].extend(one.get("warnings") or [])
            log(trial.line(label, i, cfg.num_trials, one))
            if one["status"] != "ok":
                code = EXIT_FAILED
        own.append({"name": "trials", "seconds": time.perf_counter() - t})
        beaten = sorted({x["ceiling"] for x in doc["trials"] if x.get("ceiling_beaten")})
        if beaten and doc["ceilings"] is not None:
            doc["ceilings"]["unreliable"] = beaten
        if code:
            trials_failed(doc)
    except Terminated as e:
        raise terminated(doc, e, done, cfg.num_trials, pod, own) from None
    except Exception as e:
        code = failure(doc, e, label)
    doc["finished_at"] = now()
    doc["pod"] = pod.record(own)
    return doc, code


def failure(doc: dict[str, Any], e: Exception, label: str) -> int:
    """Record a library's failure in its document, say it in one line, return the exit code."""
    fail(doc, e, trial.where(e))
    if isinstance(e, (BadInput, Transient)):
        log(f"{label}: {one_line(e)}")
        return EXIT_BAD_INPUT if isinstance(e, BadInput) else EXIT_TRANSIENT
    log(f"{label}: unexpected {one_line(e)} (at {trial.where(e)})")
    return EXIT_FAILED


def trials_failed(doc: dict[str, Any]) -> None:
    """Mark a document whose trials did not all verify, naming the first problem."""
    bad = [x for x in doc["trials"] if x["status"] != "ok"]
    doc["status"] = "error"
    doc["error"] = {"type": "TrialFailed", "where": "trials",
                    "message": f"{len(bad)} of {len(doc['trials'])} trial(s) failed; "
                               f"first: {trial.problem(bad[0])}"}


def terminated(doc: dict[str, Any], e: Terminated, done: int, total: int, pod: Pod,
               own: list[dict[str, Any]], extra: str = "") -> _Finished:
    """The error document of a library cut short by a signal, ready to be emitted."""
    fail(doc, e, f"trial {done + 1}")
    doc["error"]["message"] = (f"terminated by {e} during trial {done + 1} of {total}; "
                               f"{done} trial(s) done are kept{extra}")
    doc["finished_at"] = now()
    doc["pod"] = pod.record(own)
    return _Finished(doc, 128 + e.signum)


class _Finished(BaseException):
    """Carries the last document out of a terminated run."""

    def __init__(self, doc: dict[str, Any], code: int) -> None:
        super().__init__(code)
        self.doc, self.code = doc, code


def summary_table(docs: list[dict[str, Any]]) -> str:
    """The terminal's table: the median of each variant's verified trials."""
    rows = [("library", "io mode", "trials ok", "median s", "GB/s", "verified")]
    for doc in docs:
        ok = [x["total_s"] for x in doc["trials"] if x["status"] == "ok"]
        med, gbps = median_rate(ok, (doc.get("model") or {}).get("bytes"))
        verified = "yes" if ok and len(ok) == len(doc["trials"]) else (
            (doc.get("error") or {}).get("message") or "no")
        rows.append((doc["label"], doc.get("io_mode") or "-", f"{len(ok)}/{len(doc['trials'])}",
                     f"{med:.3f}" if med else "-", f"{gbps:.2f}" if gbps else "-", verified))
    return text_table(rows, wrap=60)


def result_lines_wanted(setting: str) -> bool:
    if setting == "auto":
        return not sys.stdout.isatty()
    return setting == "1"


class Emitter:
    """Prints and writes documents; remembers what could not be written."""

    def __init__(self, res_path: str | None, lines: bool) -> None:
        self.res_path, self.lines = res_path, lines
        self.unwritten: list[str] = []

    def __call__(self, doc: dict[str, Any]) -> None:
        path_error = None
        if self.res_path:
            try:
                log(f"wrote {document.write(doc, self.res_path)}")
            except OSError as e:
                path_error = e
        if self.lines or path_error:  # the logs keep the data when the volume lost it
            print(document.log_line(doc), flush=True)
        if path_error:
            self.unwritten.append(doc["label"])
            log(f"could not write the {doc['label']} document under RES_PATH={self.res_path!r}: "
                f"{one_line(path_error)}; its LOADBENCH_RESULT line is on stdout")


def config_error_document(exc: BaseException, environ: dict[str, str]) -> dict[str, Any]:
    recorded = {k: environ.get(k) for k in config.settings.BY_NAME if k in environ}
    recorded["RUN_ID"] = environ.get("RUN_ID") if valid_run_id(environ.get("RUN_ID")) else "config-error"
    doc = document.new_document("none", "config-error", {}, None, recorded, recorded)
    return fail(doc, exc, "settings")


def main(environ: dict[str, str] | None = None, progress: Callable[[str], None] = log) -> int:
    pod = Pod()
    env = dict(os.environ if environ is None else environ)
    old = {s: signal.signal(s, _raise_terminated) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(env, pod)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _main(env: dict[str, str], pod: Pod) -> int:
    from loadbench.measure import tp
    try:
        cfg = config.load(env)
        multi = tp.multinode(env, cfg.tp_size)  # WORLD_SIZE>1: this pod is one rank of a group of pods
        device = machine.resolve_device(cfg.device)
    except ConfigError as e:
        emit = Emitter(env.get("RES_PATH") or "./results",
                       result_lines_wanted((env.get("RESULT_LINES") or "auto").strip().lower()))
        emit(config_error_document(e, env))
        log(f"configuration error: {one_line(e)}")  # the last line: what was wrong and where
        return EXIT_BAD_INPUT
    emit = Emitter(cfg.res_path, result_lines_wanted(cfg.result_lines))
    writer = emit if multi is None or multi.rank == 0 else (lambda doc: None)  # rank 0's pod writes
    machine.init_device(device)
    pod.phase("device init")
    plan = config.variants(cfg)
    log(f"run {cfg.run_id}: {cfg.model_id} from {cfg.model_path} on {device}, {cfg.cache_mode}, "
        f"{cfg.num_trials} trial(s) each of {', '.join(config.label(lib, o) for lib, o in plan)}")
    shared: dict[str, Any] = {}
    docs, code = [], EXIT_OK
    try:
        for lib, options in plan:
            if cfg.tp_size > 1 or multi:  # N rank processes, one document (measure/tp.py)
                doc, lib_code = tp.run_library_tp(lib, options, cfg, device, shared, pod, multi=multi)
            else:
                doc, lib_code = run_library(lib, options, cfg, device, shared, pod)
            writer(doc)
            docs.append(doc)
            code = max(code, lib_code)
    except _Finished as f:
        writer(f.doc)
        log(f"{f.doc['label']}: {f.doc['error']['message']} (exit {f.code})")
        return f.code
    except Terminated as e:  # between libraries: nothing in flight
        log(f"terminated by {e} between libraries (exit {128 + e.signum})")
        return 128 + e.signum
    print("\n" + summary_table(docs), file=sys.stderr, flush=True)
    if multi and multi.rank:  # the group's documents are rank 0's to write
        ok = sum(d["status"] == "ok" for d in docs)
        log(f"rank {multi.rank} of {multi.world} pods: rank 0's pod ({multi.addr}) wrote the {len(docs)} "
            f"document(s), {ok} ok; this pod wrote none (exit {code}, as rank 0's)")
        return code
    if emit.unwritten:
        log(f"{len(emit.unwritten)} result document(s) could not be written under RES_PATH="
            f"{cfg.res_path!r} ({', '.join(emit.unwritten)}); their LOADBENCH_RESULT lines are on "
            f"stdout (exit {EXIT_NOT_WRITTEN})")
        return EXIT_NOT_WRITTEN
    failed = [d for d in docs if d["status"] != "ok"]
    if failed:  # the last line names what went wrong, not a table row
        e = failed[0]["error"] or {}
        log(f"{len(failed)} of {len(docs)} failed; {failed[0]['label']}: {e.get('message')} (exit {code})")
    else:
        log(f"all {len(docs)} ok: {sum(len(d['trials']) for d in docs)} verified load(s); documents "
            f"under {os.path.join(cfg.res_path, cfg.run_id)}")
    return code
