"""plot_results.py: read every result document, compute, draw, write the report.

Thin on purpose: the numbers come from frame.py and summary.py (which gathers
groups, views, apart, pods, tp and blocks), the pictures from figures.py, the
page from html.py; this module reads arguments, shows progress on long inputs
(a line every few seconds while reading, every 500 documents while tabulating,
each figure group), writes the files and ends with a short summary. Invalid
documents are listed with the reasons schema.read_many gives and never stop
the report.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
import traceback
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from loadbench import schema
from loadbench.terminal import logger

if TYPE_CHECKING:
    from loadbench.analysis import summary as report

EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2
PROGRESS_EVERY = 5.0      # seconds between "still reading" lines
FORMATS = ("png", "svg", "pdf")

DESCRIPTION = """\
Turn a folder of loadbench result documents (JSON, found recursively) into
summary.md, summary.csv, report.html (self-contained: tables, figures and run
metadata in one file) and figures, written to --out (default
RESULTS_DIR/report). Tables, picks and figures use each process's first load
(what a pod pays); later loads of a process are reported apart ("repeat in a
warm process"), with the pods' time outside their loads, and documents that
measured nothing are listed under Errors, never as a group. The terminal gets
the summary tables and which loader to pick per cache state."""
EPILOG = """\
examples:
  plot_results.py results/                       # report in results/report/
  plot_results.py results/ --out report --format png,svg --title "gpt-j-6b on H200"
  plot_results.py results/ --no-plots            # tables and report.html only
  plot_results.py results/ --out docs/run --link-figures   # report.html shows the PNG files

in a notebook:
  from loadbench.analysis import load, table
  df = load("results/")     # one row per trial
  table(df)                 # one row per library and cache state, every statistic

exit codes: 0 report written; 1 no valid result document found, or the report
could not be written; 2 bad arguments (unknown option, RESULTS_DIR not a
folder, --out not a folder, unknown --format)."""


_log = logger("plot_results")
SCRIPT = "plot_results.py"
COMMAND = "loadbench report"


def prog_name(argv: list[str] | None = None) -> str:
    """What --help and usage lines call this command: `loadbench report` when the loadbench
    command dispatched to it (it records the command it runs), else the script's name."""
    top = sys.modules.get("loadbench.cli")
    running = getattr(top, "PROG_OVERRIDE", None)
    if argv is not None and running and running[-1] == COMMAND:
        return COMMAND
    return SCRIPT


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    """The arguments, checked here so that a bad one exits 2 before anything is read or written."""
    ap = argparse.ArgumentParser(prog=prog or prog_name(argv), description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir", metavar="RESULTS_DIR", help="folder of result documents")
    ap.add_argument("--out", metavar="DIR", help="output folder (default: RESULTS_DIR/report)")
    ap.add_argument("--format", default="png", metavar="LIST",
                    help="figure formats, a comma list of png, svg, pdf (default: png)")
    ap.add_argument("--title", default="loadbench summary", help="heading of summary.md and report.html")
    ap.add_argument("--no-plots", action="store_true", help="tables and report.html without figures")
    ap.add_argument("--link-figures", action="store_true",
                    help="report.html shows the figure files written beside it instead of embedding "
                         "copies (smaller, for a folder kept whole, e.g. in git; not for mailing)")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.results_dir):
        ap.error(f"RESULTS_DIR {args.results_dir!r} is not a folder")
    args.formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in FORMATS]
    if bad or not args.formats:
        ap.error(f"unknown --format {', '.join(bad) or repr(args.format)}; use {', '.join(FORMATS)}")
    args.out = args.out or os.path.join(args.results_dir, "report")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        ap.error(f"--out {args.out!r} exists and is not a folder")
    if any(c in args.title for c in "\r\n"):
        ap.error("--title must be one line")
    return args


def read(root: str, log: Callable[[str], None] = _log, every: float = PROGRESS_EVERY
         ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """schema.read_many in a worker thread, with a progress line every `every` seconds."""
    files = sum(1 for _ in schema.iter_files(root))
    log(f"reading {files} JSON file(s) under {root}")
    result: dict[str, Any] = {}

    def work() -> None:
        """Runs read_many; an exception is kept for the caller to say in one line."""
        try:
            result["value"] = schema.read_many(root)
        except BaseException as e:  # reported below, never as a traceback
            result["error"] = e

    start = time.perf_counter()
    worker = threading.Thread(target=work, name="read_many", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(every)
        if worker.is_alive():
            log(f"still reading: {time.perf_counter() - start:.0f} s, {files} file(s)")
    if "error" in result:
        e = result["error"]
        log(f"could not read {root}: {type(e).__name__}: {e}")
        return [], []
    docs, skipped = result["value"]
    return docs, skipped


def _figures(groups: list[report.Group], eps: list[dict[str, Any]], phases: dict[str, str],
             out: str | None, formats: list[str], log: Callable[[str], None], link: bool = False
             ) -> tuple[list[str], dict[str, list[tuple[str, bytes | str]]]]:
    from loadbench.analysis import figures as plots
    written: list[str] = []
    embedded: dict[str, list[tuple[str, bytes | str]]] = {}
    jobs: list[tuple[str, str, str, Callable[[], Any]]] = []
    for g in groups:
        jobs += [(g.slug, f"{g.slug}-load-time", f"Load time, {g.title}", partial(plots.load_times, g)),
                 (g.slug, f"{g.slug}-throughput", f"Throughput, {g.title}", partial(plots.throughput, g)),
                 (g.slug, f"{g.slug}-cdf", f"Distribution of load times, {g.title}",
                  partial(plots.cdf, g)),
                 (g.slug, f"{g.slug}-pod-time", f"Pod time by phase, {g.title}",
                  partial(plots.pod_time, g, phases))]
    by_machine: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in eps:
        by_machine.setdefault((e["model"], e["device"]), []).append(e)
    for (model, device), some in by_machine.items():
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{model}-{device}")[:150]
        jobs.append(("concurrent", f"{slug}-concurrent-timeline", f"Concurrent loads, {model} on {device}",
                     partial(plots.timeline, some)))
    last = time.perf_counter()
    for k, (key, name, caption, draw) in enumerate(jobs):
        if time.perf_counter() - last > PROGRESS_EVERY:
            log(f"figures: {k} of {len(jobs)}")
            last = time.perf_counter()
        try:
            fig = draw()
            if fig is None:
                continue
            paths, png = plots.render(fig, out, name, formats)
        except Exception as e:  # one figure lost is said in a line, the report goes on
            log(f"could not draw {name}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            continue
        written += paths
        # a linked page shows a PNG or SVG file beside it; PDF only (no <img> shows it): embedded
        shown = next((p for ext in (".png", ".svg") for p in paths if p.endswith(ext)), None)
        embedded.setdefault(key, []).append((caption, os.path.basename(shown) if link and shown else png))
    return written, embedded


def _fastest(g: report.Group) -> tuple[str | None, float | None]:
    rows = g.rows[~g.rows["is_reference"] & g.rows["median_s"].notna()].sort_values("median_s")
    return (str(rows.iloc[0]["row"]), float(rows.iloc[0]["median_s"])) if len(rows) else (None, None)


def _plain(text: str) -> str:
    return text.replace("**", "")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Exit code: 0 report written, 1 nothing to report or not written, 2 bad arguments.
    `prog`: the command's name in --help and in the report's metadata (default: prog_name())."""
    prog = prog or prog_name(argv)
    args = parse(argv, prog)
    try:
        return _run(args, argv, prog)
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    except Exception as e:  # the last net: one line, where, never a traceback
        frame = traceback.extract_tb(e.__traceback__)[-1]
        _log(f"internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
             f"(at {os.path.basename(frame.filename)}:{frame.lineno}); please report it")
        return EXIT_NOTHING


def _run(args: argparse.Namespace, argv: list[str] | None, prog: str = SCRIPT) -> int:
    from loadbench.analysis import frame as fr
    from loadbench.analysis import html as page
    from loadbench.analysis import summary as report
    start = time.perf_counter()
    docs, skipped = read(args.results_dir)
    errors = sum(1 for d in docs if d.get("status") == "error")
    _log(f"{len(docs)} documents ({errors} with status error), {len(skipped)} skipped, "
         f"read in {time.perf_counter() - start:.1f} s")
    for path, why in skipped:
        _log(f"skipped {path}: {why}")
    if not docs:
        _log("no result documents to report")
        return EXIT_NOTHING
    big = len(docs) >= 1000
    df = fr.frame(docs, (lambda n: _log(f"tabulating: {n} of {len(docs)} documents")) if big else None)
    groups = report.build(df)
    eps = report.episodes(df)
    phases = df.attrs.get("phases", {})
    later = len(report.repeats(df))
    _log(f"{len(df)} rows, {len(groups)} group(s)"
         + (f", {later} repeat(s) in a warm process reported apart" if later else "")
         + (f", {len(eps)} episode(s) of concurrent pods" if eps else ""))
    blocks = report.blocks(groups, skipped, args.title, phases, eps, df=df)
    try:
        os.makedirs(args.out, exist_ok=True)
        written: list[str] = []
        embedded: dict[str, list[tuple[str, bytes | str]]] = {}
        if not args.no_plots:
            written, embedded = _figures(groups, eps, phases, args.out, args.formats, _log,
                                         args.link_figures)
        command = f"{prog} " + " ".join(shlex.quote(a) for a in (
            sys.argv[1:] if argv is None else argv))
        meta = page.metadata(docs, command)
        for name, text in (("summary.md", report.markdown(blocks)), ("summary.csv", report.csv_text(groups)),
                           ("report.html", page.page(blocks, embedded, meta))):
            path = os.path.join(args.out, name)
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            written.append(path)
    except OSError as e:
        _log(f"could not write the report under {args.out}: {type(e).__name__}: {e}")
        return EXIT_NOTHING
    print(report.terminal(groups, df), end="")
    chosen = report.picks(groups)
    if chosen:
        print("\nWhich loader to pick:\n" + "\n".join(f"- {_plain(c)}" for c in chosen))
    for g in groups:
        for w in report.warning_lines(g):
            _log(f"warning: {g.title}: {w}")
    for line in report.kept_apart(groups):
        _log(f"kept apart: {line}")
    failed = report.error_table(df)
    if failed:
        _log(f"{sum(int(r[-1]) for r in failed)} error document(s) measured nothing: listed under "
             "Errors, kept out of the tables")
    for o in report.pod_overhead(df, phases):
        _log(f"pod overhead, {o.model} on {o.device}: median {report.fmt_s(o.outside_s)} s outside "
             f"the timed loads over {len(o.pods)} pod(s)")
    verified = int((df["status"] == "ok").sum())
    fastest = "; ".join(f"{g.state} fastest {name} {report.fmt_s(seconds)} s"
                        for g in groups for name, seconds in [_fastest(g)] if name)
    _log(f"{len(docs)} documents, {verified} verified loads, {len(groups)} group(s)"
         + (f"; {fastest}" if fastest else "")
         + f"; wrote {len(written)} files to {args.out} in {time.perf_counter() - start:.1f} s "
         f"(open {os.path.join(args.out, 'report.html')})")
    return EXIT_OK
