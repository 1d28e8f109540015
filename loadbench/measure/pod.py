"""What every load path of a pod shares: its clock, its state, its failures.

A pod runs library variants one after another, in one process (TP_SIZE=1) or
through rank processes (measure/tp_parent.py); both paths use what is here,
so termination, failure documents, the library check, node ceilings and the
pod's phases are written once.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from loadbench import config, loaders, machine
from loadbench.errors import BadInput, NeedsCUDA, Transient, exit_code, one_line
from loadbench.measure import document
from loadbench.measure.document import fail, now
from loadbench.schema.result import MAX_PACKAGES, PACKAGE
from loadbench.storage import ceilings
from loadbench.terminal import logger

log = logger("loadbench")


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived: finish the document in flight, then exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


class Finished(BaseException):
    """Carries the last document out of a terminated run."""

    def __init__(self, doc: dict[str, Any], code: int) -> None:
        super().__init__(code)
        self.doc, self.code = doc, code


_SEEN: set[str] = set()  # the third-party packages this process had imported at the last look


def new_packages() -> list[str]:
    """The third-party packages (top-level names, no standard library, no private modules)
    imported since the last call: what a pod's phase spent its imports on. The first call
    returns every one imported so far."""
    stdlib = sys.stdlib_module_names
    modules = dict(sys.modules)
    now = {name.partition(".")[0] for name in modules}
    fresh = sorted(n for n in now - _SEEN if n not in stdlib and not n.startswith("_")
                   and _imported(modules.get(n)) and PACKAGE.fullmatch(n))
    _SEEN.update(now)
    return fresh[:MAX_PACKAGES]  # within the schema's limits, or the document would be invalid



def _imported(module: Any) -> bool:
    """A module with no spec was made, not imported (Cython's cython_runtime, __main__). Read
    from its __dict__: a lazily loaded module would be loaded by getattr."""
    try:
        return object.__getattribute__(module, "__dict__").get("__spec__") is not None
    except Exception:
        return False


def phase(name: str, seconds: float) -> dict[str, Any]:
    """A phase of the pod's time, with the packages it imported first, if any."""
    out: dict[str, Any] = {"name": name, "seconds": seconds}
    packages = new_packages()
    if packages:
        out["packages"] = packages
    return out


class PodClock:
    """The pod's phases since the process started, shared by its documents."""

    def __init__(self) -> None:
        self.started = machine.process_started_at()
        self.phases: list[dict[str, Any]] = [
            phase("startup and imports", max(0.0, time.time() - self.started))]
        self._t = time.perf_counter()

    def phase(self, name: str) -> None:
        """Close the phase that ran since the last call, under `name`."""
        t = time.perf_counter()
        self.phases.append(phase(name, t - self._t))
        self._t = t

    def record(self, own: list[dict[str, Any]]) -> dict[str, Any]:
        return {"process_started_at": datetime.fromtimestamp(self.started, timezone.utc).isoformat(),
                "phases": self.phases + own, "total_s": max(0.0, time.time() - self.started)}


@dataclass
class PodState:
    """What one pod process carries from one library variant to the next."""
    ceilings: dict[str, Any] | None = None
    ceilings_s: float | None = None       # set once they are measured or read
    warmed: bool = False                  # the architecture's modeling code is imported
    loads: int = 0                        # loads this process has made: a trial's index_in_process
    pool: Any = None                      # the rank processes of a TP pod (tp_parent.RankPool)
    extra: dict[str, Any] = field(default_factory=dict)

    def next_load(self) -> int:
        index, self.loads = self.loads, self.loads + 1
        return index


def node_ceilings(cfg: config.Settings, paths: list[str], device: torch.device, state: PodState,
                  own: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The node's ceilings, measured or reused once per pod; the first call records the phase."""
    if cfg.ceilings == "off":
        return None
    if state.ceilings_s is None:
        before = time.perf_counter()
        node = cfg.identity.get("NODE_NAME") or machine.identity({})["node"]
        if cfg.model_uri:  # what this endpoint serves, and the device; there are no local files yet
            from loadbench.storage import objectstore

            def measure() -> dict[str, Any]:
                found = ceilings.device_ceilings(device, cfg.ceiling_seconds, log)
                found["s3_get"] = objectstore.get_ceiling(cfg.model_uri, seconds=cfg.ceiling_seconds,
                                                          progress=log)
                return found
            if cfg.ceilings == "measure":
                state.ceilings = dict(measure(), source="measured")
            else:
                uri = objectstore.parse_uri(cfg.model_uri)
                # the endpoint the client resolves (environment, profile, region), never a secret
                endpoint = objectstore.redact(objectstore.client().meta.endpoint_url)
                state.ceilings = ceilings.for_endpoint(cfg.res_path, node, device, endpoint, uri.bucket,
                                                       uri.prefix, measure, log, ttl_s=cfg.ceilings_ttl_s,
                                                       fresh=cfg.ceilings == "fresh")
        elif cfg.ceilings == "measure":
            state.ceilings = dict(ceilings.measure(paths, device, cfg.ceiling_seconds, log),
                                  source="measured")
        else:
            state.ceilings = ceilings.for_node(cfg.res_path, node, paths, device, cfg.ceiling_seconds,
                                               log, ttl_s=cfg.ceilings_ttl_s,
                                               fresh=cfg.ceilings == "fresh")
        state.ceilings_s = time.perf_counter() - before
        own.append(phase("ceilings", state.ceilings_s))
    return None if state.ceilings is None else dict(state.ceilings)


def new_document(lib: str, options: dict[str, Any], cfg: config.Settings, device: torch.device
                 ) -> dict[str, Any]:
    """A new document for one library variant (never raises: failures go into it)."""
    doc = document.new_document(lib, config.label(lib, options), options, cfg)
    doc["settings"]["DEVICE_RESOLVED"] = str(device)
    return doc


def require_library(lib: str, cfg: config.Settings, device: torch.device, doc: dict[str, Any]) -> Any:
    """The library's module, imported, with versions and device recorded; bad input raises."""
    mod = loaders.require(lib)
    doc["versions"] = machine.versions()
    doc["device"] = machine.device_info(device)
    if loaders.get(lib).needs_cuda and device.type != "cuda":
        raise NeedsCUDA(f"library {lib!r} needs CUDA: it loads only onto CUDA devices, and "
                        f"DEVICE={cfg.device} resolved to {device}; run it on a GPU node or drop "
                        f"it from LIBRARIES")
    return mod


def failure(doc: dict[str, Any], e: BaseException, label: str, where: str) -> int:
    """Record a library's failure in its document, say it in one line, return the exit code."""
    fail(doc, e, where)
    if isinstance(e, (BadInput, Transient)):
        log(f"{label}: {one_line(e)}")
    else:
        log(f"{label}: unexpected {one_line(e)} (at {where})")
    return exit_code(e)


def problem(trial: dict[str, Any]) -> str:
    """What went wrong in a failed trial, in one line."""
    if trial["status"] == "mismatch":
        m = trial["mismatches"]
        return f"{len(m)} tensor(s) differ from the manifest, e.g. {m[0]['tensor']}: {m[0]['problem']}"
    e = trial.get("error") or {}
    return f"{e.get('type')}: {e.get('message')} (at {e.get('where')})"


def trials_failed(doc: dict[str, Any]) -> None:
    """Mark a document whose trials did not all verify, naming the first problem."""
    bad = [x for x in doc["trials"] if x["status"] != "ok"]
    doc["status"] = "error"
    doc["error"] = {"type": "TrialFailed", "where": "trials",
                    "message": f"{len(bad)} of {len(doc['trials'])} trial(s) failed; "
                               f"first: {problem(bad[0])}"}


def terminated(doc: dict[str, Any], e: Terminated, done: int, total: int, clock: PodClock,
               own: list[dict[str, Any]], extra: str = "") -> Finished:
    """The error document of a library cut short by a signal, ready to be emitted."""
    fail(doc, e, f"trial {done + 1}")
    doc["error"]["message"] = (f"terminated by {e} during trial {done + 1} of {total}; "
                               f"{done} trial(s) done are kept{extra}")
    doc["finished_at"] = now()
    doc["pod"] = clock.record(own)
    return Finished(doc, 128 + e.signum)
