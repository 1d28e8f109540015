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
from typing import Any, Callable

from loadbench import config, machine
from loadbench.config.settings import valid_run_id
from loadbench.errors import EXIT_BAD_INPUT, EXIT_NOT_WRITTEN, EXIT_OK, ConfigError, one_line
from loadbench.measure import document
from loadbench.measure.document import fail
from loadbench.measure.pod import Finished, PodClock, PodState, Terminated, log, raise_terminated
from loadbench.measure.tp_launch import multinode
from loadbench.measure.tp_parent import Ranks
from loadbench.measure.variant import SingleProcess, Strategy, run_variant
from loadbench.terminal import median_rate, text_table


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


def res_path_problem(res_path: str) -> str | None:
    """Why nothing could be written under RES_PATH (create, write and remove a probe), or None."""
    probe = os.path.join(res_path, f".loadbench-probe-{os.getpid()}")
    try:
        os.makedirs(res_path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("probe")
        os.unlink(probe)
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def config_error_document(exc: BaseException, environ: dict[str, str]) -> dict[str, Any]:
    recorded = {k: environ.get(k) for k in config.settings.BY_NAME if k in environ}
    recorded["RUN_ID"] = environ.get("RUN_ID") if valid_run_id(environ.get("RUN_ID")) else "config-error"
    doc = document.new_document("none", "config-error", {}, None, recorded, recorded)
    return fail(doc, exc, "settings")


def main(environ: dict[str, str] | None = None) -> int:
    clock = PodClock()
    env = dict(os.environ if environ is None else environ)
    old = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(env, clock)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _main(env: dict[str, str], clock: PodClock) -> int:
    try:
        cfg = config.load(env)
        multi = multinode(env, cfg.tp_size)  # WORLD_SIZE>1: this pod is one rank of a group of pods
        device = machine.resolve_device(cfg.device)
    except ConfigError as e:
        emit = Emitter(env.get("RES_PATH") or "./results",
                       result_lines_wanted((env.get("RESULT_LINES") or "auto").strip().lower()))
        emit(config_error_document(e, env))
        log(f"configuration error: {one_line(e)}")  # the last line: what was wrong and where
        return EXIT_BAD_INPUT
    problem = res_path_problem(cfg.res_path)
    if problem:  # nothing could be kept: say so before any work, as bad input no retry fixes
        log(f"configuration error: RES_PATH={cfg.res_path!r} is not writable: {problem}; mount a "
            f"writable volume there or set RES_PATH (exit {EXIT_BAD_INPUT})")
        return EXIT_BAD_INPUT
    emit = Emitter(cfg.res_path, result_lines_wanted(cfg.result_lines))
    writer: Callable[[dict[str, Any]], None] = (
        emit if multi is None or multi.rank == 0 else (lambda doc: None))  # rank 0's pod writes
    machine.init_device(device)
    clock.phase("device init")
    plan = config.variants(cfg)
    log(f"run {cfg.run_id}: {cfg.model_id} from {cfg.model_path} on {device}, {cfg.cache_mode}, "
        f"{cfg.num_trials} trial(s) each of {', '.join(config.label(lib, o) for lib, o in plan)}")
    state = PodState()
    # One decision: this pod's loads run in this process, or through rank processes.
    strategy: Callable[[], Strategy] = (
        (lambda: Ranks(cfg, device, state, multi)) if cfg.tp_size > 1 or multi
        else (lambda: SingleProcess(cfg, device, state)))
    docs, code = [], EXIT_OK
    try:
        for lib, options in plan:
            doc, lib_code = run_variant(strategy(), lib, options, cfg, device, state, clock)
            writer(doc)
            docs.append(doc)
            code = max(code, lib_code)
    except Finished as f:
        writer(f.doc)
        log(f"{f.doc['label']}: {f.doc['error']['message']} (exit {f.code})")
        return f.code
    except Terminated as e:  # between libraries: nothing in flight
        log(f"terminated by {e} between libraries (exit {128 + e.signum})")
        return 128 + e.signum
    finally:
        if state.pool is not None:
            state.pool.close()
    print("\n" + summary_table(docs), file=sys.stderr, flush=True)
    if multi and multi.rank:  # the group's documents are rank 0's to write
        ok = sum(d["status"] == "ok" for d in docs)
        log(f"rank {multi.rank} of {multi.world} pods: rank 0's pod ({multi.addr}) wrote the {len(docs)} "
            f"document(s), {ok} ok; this pod wrote none (exit {code}, as rank 0's)")
        return code
    if emit.unwritten:  # bad input (2) still wins: a retry cannot fix it
        final = code if code == EXIT_BAD_INPUT else EXIT_NOT_WRITTEN
        log(f"{len(emit.unwritten)} result document(s) could not be written under RES_PATH="
            f"{cfg.res_path!r} ({', '.join(emit.unwritten)}); their LOADBENCH_RESULT lines are on "
            f"stdout (exit {final})")
        return final
    failed = [d for d in docs if d["status"] != "ok"]
    if failed:  # the last line names what went wrong, not a table row
        first = failed[0]["error"] or {}
        log(f"{len(failed)} of {len(docs)} failed; {failed[0]['label']}: {first.get('message')} "
            f"(exit {code})")
    else:
        log(f"all {len(docs)} ok: {sum(len(d['trials']) for d in docs)} verified load(s); documents "
            f"under {os.path.join(cfg.res_path, cfg.run_id)}")
    return code
