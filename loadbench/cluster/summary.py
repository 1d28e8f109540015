"""What localjob says when a Job ends: its status, where its files went, a results table.

A local run is read by a person at a terminal: the table comes from
plot_results.py itself (in its own process, so a broken document cannot take
the runner down), and when that fails the documents are still listed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Callable, Iterator

from loadbench.cluster.podspec import APP_DIR
from loadbench.cluster.runner import JobResult


def shown_path(path: str) -> str:
    """A path relative to here when it is below here: shorter to read, same to paste."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def documents_in(folder: str) -> list[str]:
    """Result documents under a RUN_ID folder (not its ceilings/ or other JSON files)."""
    out = []
    for d, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(d, f)
            if not f.endswith(".json") or f.startswith(".tmp-"):
                continue
            try:
                with open(path) as fh:
                    schema = json.load(fh).get("schema", "")
            except (OSError, ValueError, AttributeError):
                schema = "loadbench.result?"  # unreadable: shown, for plot_results to judge
            if str(schema).startswith("loadbench.result"):
                out.append(path)
    return out


def results_folders(res: JobResult) -> list[tuple[str, int]]:
    """(folder, result documents in it) for every results folder the Job's pods resolved."""
    return [(path, len(documents_in(path))) for path in sorted(res.results_dirs) if os.path.isdir(path)]


def job_lines(res: JobResult, folders: list[tuple[str, int]]) -> Iterator[tuple[bool, str]]:
    """(whether it is a warning, line) for one finished Job: status, model, results, lost paths."""
    pods = len(res.pods)
    yield False, (f"job/{res.name}: {res.status}{' (' + res.reason + ')' if res.reason else ''}, "
                  f"{pods} pod{'s' * (pods != 1)} in {res.seconds:.1f} s")
    for path in sorted(res.model_dirs):
        if os.path.exists(os.path.join(path, "manifest.json")):
            yield False, f"  model:   {shown_path(path)}"
    for path, n in folders:
        yield False, f"  results: {shown_path(path)} ({n} document{'s' * (n != 1)})"
    for path in sorted(res.lost):
        yield True, f"  {shown_path(path)} is not on a volume: gone with the pod, as in Kubernetes"


def summary(results_dir: str, log: Callable[[str], None]) -> str:
    """The summary table of a results folder: plot_results.py --no-plots in its own process
    (tables only, written to a scratch folder); a plain listing if that fails."""
    with tempfile.TemporaryDirectory(prefix="localjob-report-") as out:
        proc = subprocess.run([sys.executable, str(APP_DIR / "plot_results.py"), results_dir,
                               "--no-plots", "--out", out],
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(APP_DIR)})
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.rstrip()
    why = ([ln for ln in proc.stderr.splitlines() if ln.strip()] or ["no output"])[-1]
    log(f"plot_results.py did not summarise {shown_path(results_dir)} ({why}); the documents:")
    rows = []
    for path in sorted(documents_in(results_dir)):
        try:
            with open(path) as f:
                doc = json.load(f)
            rows.append(f"  {doc.get('label') or doc.get('library')}  {doc.get('status')}  "
                        f"{os.path.relpath(path, results_dir)}")
        except (OSError, ValueError) as e:
            rows.append(f"  (unreadable: {type(e).__name__})  {os.path.relpath(path, results_dir)}")
    return "\n".join(rows)
