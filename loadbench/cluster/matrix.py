"""Interleave libraries in one Indexed Job: the completion index picks the variant.

A seed's one-Job-per-library layout runs the libraries one after the other, so
any drift of the node over hours (a neighbour's I/O, thermal limits, a page
cache that fills) looks like a difference between libraries. The matrix Job
runs every variant in rounds instead: each round is every variant once, in an
order shuffled by a seed, and index i runs round i // V, position i % V of V
variants. Every variant meets the same drift, and a partial run is still
balanced to within one round.

The variants come from MATRIX, entries separated by `;`, each a library and
optionally its options for that entry:

    MATRIX="tensorizer;tensorizer:TZR_NUM_READERS=16;safetensors;huggingface"
    MATRIX="instanttensor:IT_BACKEND=URING_BUFFERED,IT_CONCURRENCY=8;reference"

An entry's options replace the experiment's value of those variables; others
are inherited. An entry may also set TP_SIZE (`tensorizer:TP_SIZE=2`) for a
library with a tensor-parallel path, so one Job interleaves TP 1 and 2 runs.
With MATRIX empty, the variants are LIBRARIES (default: the default
libraries) times every value of each swept option (a comma list such as
TZR_NUM_READERS=4,16), one pod per value, times MATRIX_TP (a comma list of
TP sizes, e.g. 1,2; libraries without a TP path get TP_SIZE=1 only).
MATRIX_SEED (default 0) fixes the order. Every pod of a Job asks for the same
GPUs: with TP sizes up to N, request N per pod; a TP_SIZE=1 pod uses one.

    python -m loadbench.cluster.matrix --env-file experiment.env --completions 100
    python -m loadbench.cluster.matrix --exec /app/deserialize_benchmark.py   # in the pod

`--exec` reads JOB_COMPLETION_INDEX, sets LIBRARIES and the entry's options,
says which variant it runs, and replaces itself with the script (one fresh
process, as any benchmark pod). Exit 2 when MATRIX or the index is malformed.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from loadbench import loaders
from loadbench.cluster.manifests import read_env_file
from loadbench.config import settings as config
from loadbench.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError, exit_code

MATRIX, MATRIX_SEED, MATRIX_TP = "MATRIX", "MATRIX_SEED", "MATRIX_TP"
RUN_VARS = ("TP_SIZE",)  # run-level variables an entry may set beside its library's options
APP_DIR = Path(__file__).resolve().parents[2]  # the image's /app
DEFAULT_SCRIPT = APP_DIR / "deserialize_benchmark.py"


@dataclass(frozen=True)
class Variant:
    library: str
    env: tuple[tuple[str, str], ...] = ()  # (option variable, one value)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.env)
        return f"{self.library}:{opts}" if opts else self.library


def _env_value(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def parse(text: str) -> list[Variant]:
    """MATRIX's entries, each checked against the registry and the option's parser."""
    out: list[Variant] = []
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        lib, _, opts = (part.strip() for part in entry.partition(":"))
        lib = lib.lower()
        if lib not in loaders.NAMES:
            raise ConfigError(f"MATRIX entry {entry!r}: unknown library {lib!r}; known: "
                              f"{', '.join(loaders.NAMES)}")
        own = {o.env for o in loaders.get(lib).options}
        pairs: list[tuple[str, str]] = []
        for item in filter(None, (p.strip() for p in opts.split(","))):
            name, eq, value = (p.strip() for p in item.partition("="))
            if not eq or name not in own | set(RUN_VARS):
                raise ConfigError(f"MATRIX entry {entry!r}: {item!r} is not NAME=VALUE with an option "
                                  f"of {lib} ({', '.join(sorted(own)) or 'it has none'}) or "
                                  f"{', '.join(RUN_VARS)}")
            parsed = config.BY_NAME[name].parse(name, value)  # one value, checked as the benchmark will
            if name == "TP_SIZE":
                _check_tp(lib, parsed, f"MATRIX entry {entry!r}")
            pairs.append((name, value))
        if len({n for n, _ in pairs}) != len(pairs):
            raise ConfigError(f"MATRIX entry {entry!r} sets an option twice")
        out.append(Variant(lib, tuple(pairs)))
    if len(set(out)) != len(out):
        raise ConfigError("MATRIX lists an entry twice: a variant's share comes from completions")
    return out


def _check_tp(lib: str, size: int, where: str) -> None:
    if size > 1 and not loaders.get(lib).supports_tp:
        with_tp = ", ".join(n for n in loaders.NAMES if loaders.get(n).supports_tp)
        raise ConfigError(f"{where}: {lib} has no tensor-parallel path, so TP_SIZE={size} cannot run; "
                          f"libraries with one: {with_tp}")


def tp_sizes(environ: Mapping[str, str]) -> tuple[int, ...]:
    """MATRIX_TP's sizes (a comma list of integers >= 1); () when unset."""
    raw = (environ.get(MATRIX_TP) or "").strip()
    sizes = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"{MATRIX_TP}={raw!r}: {part!r} is not a TP size (an integer >= 1)")
        sizes.append(int(part))
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"{MATRIX_TP}={raw!r} lists a size twice")
    return tuple(sizes)


def derived(environ: Mapping[str, str]) -> list[Variant]:
    """MATRIX unset: LIBRARIES times every value of each swept (comma-list) option, times
    MATRIX_TP's sizes where the library has a TP path."""
    cfg = config.load(environ)
    sizes = tp_sizes(environ)
    out = []
    for lib in cfg.libraries:
        opts = {o.env: cfg.options.get(lib, {}).get(o.field, (None,)) for o in loaders.get(lib).options}
        swept = {name: values for name, values in opts.items() if len(values) > 1}
        for combo in itertools.product(*swept.values()):
            env = tuple((n, _env_value(v)) for n, v in zip(swept, combo))
            usable: list[int | None] = [n for n in sizes if n == 1 or loaders.get(lib).supports_tp]
            if sizes and not usable:
                usable = [1]  # no TP path: it still runs, on one GPU
            for size in usable or [None]:
                out.append(Variant(lib, env if size is None else env + (("TP_SIZE", str(size)),)))
    return out


def variants(environ: Mapping[str, str]) -> list[Variant]:
    text = (environ.get(MATRIX) or "").strip()
    found = parse(text) if text else derived(environ)
    if not found:
        raise ConfigError("MATRIX has no entries")
    return found


def seed(environ: Mapping[str, str]) -> int:
    raw = (environ.get(MATRIX_SEED) or "0").strip()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"MATRIX_SEED={raw!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"MATRIX_SEED={raw!r} must be >= 0")
    return value


def round_order(n: int, seed_value: int, round_no: int) -> list[int]:
    """The shuffled positions of round `round_no`; the same on every machine and Python."""
    order = list(range(n))
    random.Random(f"loadbench-matrix:{seed_value}:{round_no}").shuffle(order)
    return order


def pick(found: list[Variant], seed_value: int, index: int) -> tuple[int, Variant]:
    """(round, variant) that completion `index` runs."""
    if index < 0:
        raise ConfigError(f"JOB_COMPLETION_INDEX={index} must be >= 0")
    round_no, pos = divmod(index, len(found))
    return round_no, found[round_order(len(found), seed_value, round_no)[pos]]


def plan(environ: Mapping[str, str], completions: int) -> list[tuple[int, int, Variant]]:
    """(index, round, variant) for indexes 0..completions-1."""
    found, s = variants(environ), seed(environ)
    return [(i, *pick(found, s, i)) for i in range(completions)]


def variant_env(variant: Variant) -> dict[str, str]:
    """What --exec adds to the pod's environment for this variant."""
    return {"LIBRARIES": variant.library, **dict(variant.env)}


def _exec(script: str, environ: dict[str, str]) -> int:
    raw = (environ.get("JOB_COMPLETION_INDEX") or "").strip()
    if not raw.isdigit():
        raise ConfigError(f"JOB_COMPLETION_INDEX={raw!r}: the matrix runs as an Indexed Job "
                          "(completionMode: Indexed), which sets it")
    found, s = variants(environ), seed(environ)
    round_no, variant = pick(found, s, int(raw))
    environ.update(variant_env(variant))
    print(f"matrix: index {raw} is round {round_no}, {variant} "
          f"({len(found)} variants, MATRIX_SEED={s})", file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, script], environ)
    return EXIT_OK  # not reached


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadbench.cluster.matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exec", dest="script", nargs="?", const=str(DEFAULT_SCRIPT), metavar="SCRIPT",
                    help="in the pod: run SCRIPT (default: deserialize_benchmark.py) with this index's "
                         "variant")
    ap.add_argument("--completions", type=int, metavar="N",
                    help="indexes to show (default: one round, every variant once)")
    ap.add_argument("--env-file", action="append", default=[], metavar="FILE",
                    help="read settings from an env file such as experiment.env (the process "
                         "environment wins)")
    args = ap.parse_args(argv)
    environ: dict[str, str] = {}
    try:
        for path in args.env_file:
            environ.update(read_env_file(path))
    except (OSError, ValueError) as e:
        print(f"matrix: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    environ.update(os.environ)
    try:
        if args.script:
            return _exec(args.script, environ)
        found = variants(environ)
        n = len(found) if args.completions is None else args.completions
        if n < 1:
            raise ConfigError("--completions must be >= 1")
        rows = plan(environ, n)
    except ConfigError as e:
        print(f"matrix: configuration error: {e}", file=sys.stderr)
        return exit_code(e)
    print(f"{len(found)} variants, MATRIX_SEED={seed(environ)}, {n} completions "
          f"({n // len(found)} full round(s){', one partial' if n % len(found) else ''})")
    width = len(str(n - 1))
    for index, round_no, variant in rows:
        print(f"{index:>{width}}  round {round_no}  {variant}")
    if n % len(found):
        print(f"note: {n} completions is not a multiple of {len(found)} variants: the last round "
              f"runs {n % len(found)} of them; use completions = {len(found)} x rounds "
              f"(e.g. {len(found) * max(1, math.ceil(n / len(found)))})", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
