"""plot_results.py: read every document, group, compute, draw, write tables."""

from __future__ import annotations

import argparse
import os
import sys
import time

from loadbench import schema
from loadbench.analysis import figures as plots
from loadbench.analysis import summary as report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="plot_results.py", description=__doc__)
    ap.add_argument("results_dir")
    ap.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    ap.add_argument("--format", default="png", help="comma list of png, svg, pdf")
    ap.add_argument("--title", default="loadbench summary", help="heading of summary.md")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.results_dir):
        print(f"plot_results: {args.results_dir} is not a folder", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.results_dir, "report")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad:
        print(f"plot_results: unknown --format {', '.join(bad)}; use png, svg or pdf",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    docs, skipped = schema.read_many(args.results_dir)
    groups = report.group(docs)
    errors = sum(len(g.errors) for g in groups)
    print(f"plot_results: {len(docs)} documents ({errors} with status error), "
          f"{len(skipped)} skipped, {len(groups)} group(s)", file=sys.stderr)
    for path, why in skipped:
        print(f"plot_results: skipped {path}: {why}", file=sys.stderr)
    if not docs:
        print("plot_results: no result documents to report", file=sys.stderr)
        return 1
    os.makedirs(out, exist_ok=True)
    md = report.markdown(groups, skipped).replace("# loadbench summary", f"# {args.title}", 1)
    written = []
    for name, text in (("summary.md", md), ("summary.csv", report.csv_text(groups))):
        path = os.path.join(out, name)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    if not args.no_plots:
        for g in groups:
            if not any(g.trials(label) for label in g.labels()):
                continue
            for draw in (plots.load_times, plots.throughput, plots.cdf):
                written += draw(g, out, formats)
            if report.overlapping(g):
                written += plots.timeline(g, out, formats)
    print(report.terminal(groups))
    for g in groups:
        for r in report.rows(g):
            for w in r["warnings"]:
                print(f"plot_results: warning: {w}", file=sys.stderr)
    print(f"plot_results: wrote {len(written)} files to {out} in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
