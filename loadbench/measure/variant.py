"""One library variant of a pod, start to finish, whatever runs the loads.

The steps are the same for a single process and for tensor-parallel ranks:
check the library, open the checkpoint, take the node's ceilings, prepare,
run the trials, record the pod's phases, finish or fail the document. What
differs (who loads, how a trial's record is made, what is stopped when a
signal arrives) is a `Strategy`: `SingleProcess` here, `Ranks` in
measure/tp_parent.py.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Protocol

import torch

from loadbench import config, loaders, models
from loadbench.errors import EXIT_FAILED, EXIT_OK
from loadbench.loaders.context import LoadContext
from loadbench.measure import trial
from loadbench.measure.document import now, where
from loadbench.measure.pod import (
    PodClock,
    PodState,
    Terminated,
    failure,
    log,
    new_document,
    new_packages,
    node_ceilings,
    phase,
    require_library,
    terminated,
    trials_failed,
)
from loadbench.measure.source import Source, for_settings
from loadbench.storage.checkpoint import Checkpoint


class Strategy(Protocol):
    """How the loads of one variant are made: in this process, or by rank processes."""
    source: Source | None

    def check(self, lib: str, mod: Any, doc: dict[str, Any]) -> None:
        """Bad input for this strategy (e.g. no TP path) raises before any work."""

    def files(self, ckpt: Checkpoint) -> list[str]:
        """The files this variant's loads read (what cache modes act on)."""

    def prepare(self, lib: str, mod: Any, options: dict[str, Any], ckpt: Checkpoint,
                doc: dict[str, Any], own: list[dict[str, Any]]) -> None:
        """Untimed work before the first trial."""

    def trial(self, i: int) -> tuple[dict[str, Any], int]:
        """One trial's record, and the exit code it asks for when it failed."""

    def finish(self) -> None:
        """After the last trial."""

    def abort(self) -> str:
        """A signal or an unexpected error: stop what runs; say what was stopped."""

    def failed(self, doc: dict[str, Any], e: Exception, stage: str) -> int | None:
        """Handle a failure this strategy knows better (None: the common handling)."""


def run_variant(strategy: Strategy, lib: str, options: dict[str, Any], cfg: config.Settings,
                device: torch.device, state: PodState, clock: PodClock,
                doc: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """One document for one library variant, and its exit code."""
    doc = doc if doc is not None else new_document(lib, options, cfg, device)
    label, spec = doc["label"], loaders.get(lib)
    new_packages()  # imports of a variant that failed before naming them are nobody's phase here
    own: list[dict[str, Any]] = []
    t = time.perf_counter()
    done, code, stage = 0, EXIT_OK, "prepare"
    def step(name: str) -> None:
        """Close a named part of the preparation: a pod's time outside its loads, itemised."""
        nonlocal t
        now_t = time.perf_counter()
        own.append(phase(name, now_t - t))
        t = now_t

    try:
        mod = require_library(lib, cfg, device, doc)
        strategy.check(lib, mod, doc)
        step("library import")
        source = for_settings(cfg)
        ckpt = source.open(spec.format)
        doc["source"] = source.record()
        files = strategy.files(ckpt)
        sizes = {os.path.join(ckpt.folder, e["name"]): e["bytes"]
                 for e in ckpt.manifest["formats"][ckpt.format]["files"]}
        doc["model"] = dict(ckpt.manifest["model"], format=spec.format,
                            file_bytes=sum(sizes.get(p) or os.path.getsize(p) for p in files),
                            files=len(files))
        step("checkpoint open")
        doc["ceilings"] = node_ceilings(cfg, ckpt.weight_files, device, state, own)
        strategy.source = source
        t = time.perf_counter()  # the ceilings phase, when there is one, is recorded by node_ceilings
        inner = len(own)
        strategy.prepare(lib, mod, options, ckpt, doc, own)  # may itemise its own parts
        step("prepare")
        own[-1]["seconds"] -= sum(p["seconds"] for p in own[inner:-1])
        if not gc.isenabled():  # a strategy that built no skeleton: loads run with the collector on
            gc.freeze()
            gc.enable()
        for i in range(cfg.num_trials):
            stage = f"trial {i + 1}"
            one, trial_code = strategy.trial(i)
            doc["trials"].append(one)
            done = i + 1
            doc["io_mode"] = one.pop("io_mode", None) or doc["io_mode"]
            doc["warnings"].extend(w for w in one.get("warnings") or [] if w not in doc["warnings"])
            log(trial.line(label, i, cfg.num_trials, one))
            code = max(code, trial_code)
        stage = "the end of the trials"
        strategy.finish()
        step("trials")
        beaten = sorted({x["ceiling"] for x in doc["trials"] if x.get("ceiling_beaten")})
        if beaten and doc["ceilings"] is not None:
            doc["ceilings"]["unreliable"] = beaten
        if code:
            trials_failed(doc)
    except Terminated as e:
        note = strategy.abort()
        raise terminated(doc, e, done, cfg.num_trials, clock, own, note) from None
    except Exception as e:
        handled = strategy.failed(doc, e, stage)
        if handled is None:
            strategy.abort()
            handled = failure(doc, e, label, where(e))
        code = handled
    except BaseException:
        strategy.abort()
        raise
    doc["finished_at"] = now()
    doc["pod"] = clock.record(own)
    return doc, code


class SingleProcess:
    """TP_SIZE=1: this process loads, verifies and generates."""

    def __init__(self, cfg: config.Settings, device: torch.device, state: PodState) -> None:
        self.cfg, self.device, self.state = cfg, device, state
        self.source: Source | None = None
        self.dtype = models.DTYPES[cfg.dtype]
        self.inference = None if cfg.skip_inference else (cfg.max_new_tokens, cfg.inference_runs)

    def check(self, lib: str, mod: Any, doc: dict[str, Any]) -> None:
        pass

    def files(self, ckpt: Checkpoint) -> list[str]:
        return ckpt.weight_files

    def prepare(self, lib: str, mod: Any, options: dict[str, Any], ckpt: Checkpoint,
                doc: dict[str, Any], own: list[dict[str, Any]]) -> None:
        self.mod, self.options, self.ckpt, self.doc = mod, options, ckpt, doc
        self.remote = self.source.remote(loaders.get(lib), ckpt) if self.source is not None else None
        # Import the architecture's modeling code once per pod, untimed: the first
        # library would otherwise pay for every library's imports.
        if not self.state.warmed:
            new_packages()  # what source.remote imported is not the modeling code's
            t0 = time.perf_counter()
            models.skeleton(LoadContext(ckpt, self.device, self.dtype, options).config, self.dtype)
            own.append(phase("modeling imports", time.perf_counter() - t0))
            self.state.warmed = True
            gc.freeze()  # what the imports made is permanent: no collection walks it inside a load
            gc.enable()  # off since the pod started (cli.bench_main): the imports are done

    def trial(self, i: int) -> tuple[dict[str, Any], int]:
        one, ctx = trial.run_trial(self.mod, self.ckpt, self.device, self.dtype, self.options,
                                   self.cfg.cache_mode, self.doc["ceilings"], self.inference,
                                   self.state.next_load(), self.source, self.remote)
        one["io_mode"] = ctx.io_mode
        return one, EXIT_OK if one["status"] == "ok" else EXIT_FAILED

    def finish(self) -> None:
        pass

    def abort(self) -> str:
        return ""

    def failed(self, doc: dict[str, Any], e: Exception, stage: str) -> int | None:
        return None
