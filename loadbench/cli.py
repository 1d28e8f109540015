"""The `loadbench` command and the four scripts' glue: help, settings in, one clear line out.

    loadbench save      # save_models.py
    loadbench bench     # deserialize_benchmark.py
    loadbench report    # plot_results.py
    loadbench collect   # collect_results.py
    loadbench --version

Every command has --help, which prints and touches nothing. save and bench
are configured by environment variables (as in the Job manifests) and take
no arguments: an unknown argument is exit 2.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

from loadbench import __version__
from loadbench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_MEANINGS, exit_code, one_line
from loadbench.terminal import logger

# The meanings are errors.EXIT_MEANINGS; the examples say which failures fall under each code.
EXAMPLES = {
    EXIT_BAD_INPUT: "unknown library or value, malformed MODEL_ID, missing/truncated checkpoint,\n"
                    "DEVICE=cuda without a GPU, a library not installed or one that needs CUDA on a CPU,\n"
                    "not enough disk for the save",
}
EXIT_CODES = "\n".join(
    ["exit codes:"]
    + [f"  {code:<3}  {meaning}" + "".join(f"\n       {line}" for line in EXAMPLES.get(code, "").splitlines())
       for code, meaning in EXIT_MEANINGS.items()]
    + ["  130  interrupted (SIGINT), 143 terminated (SIGTERM): an error document says during which trial"])

SAVE_VARS = ("MODEL_ID", "MODEL_PATH", "DTYPE", "USE_FP16", "RANDOM_SEED", "SHARD_SIZE", "TP_SIZE",
             "NUM_TRIALS", "LIBRARIES", "SKIP_TZR", "SKIP_ST", "SKIP_HF", "DEVICE")


def _env_help(names: tuple[str, ...] | None) -> str:
    from loadbench.config.settings import SETTINGS
    rows = [s for s in SETTINGS if names is None or s.name in names]
    width = max(len(s.name) for s in rows)
    lines = ["environment variables (default in brackets; the README's table has them all):"]
    for s in rows:
        lines.append(f"  {s.name.ljust(width)}  [{s.default or ''}]  {s.help}")
    return "\n".join(lines)


def _parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _env_only(prog: str, description: str, names: tuple[str, ...] | None, example: str,
              argv: list[str] | None) -> None:
    """--help for a command configured only by environment variables; exits on --help or junk."""
    if argv is not None and PROG_OVERRIDE:
        prog = PROG_OVERRIDE[-1]
    ap = _parser(prog, description, f"{_env_help(names)}\n\n{EXIT_CODES}\n\nexample:\n  {example}")
    ap.parse_args(sys.argv[1:] if argv is None else argv)  # exits 0 on --help, 2 on junk


def save_main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    _env_only("save_models.py", "Save MODEL_ID in every format the requested libraries read, with a "
              "checksum of every tensor in manifest.json (written last).", SAVE_VARS,
              "MODEL_ID=random/gpt-j-6b DEVICE=cuda python save_models.py", argv)
    from loadbench.config.settings import load as load_settings
    from loadbench.measure import saving
    log = logger("save_models")
    env = dict(os.environ if environ is None else environ)
    try:
        cfg = load_settings(env)
        manifest = saving.save_all(cfg, log)
    except KeyboardInterrupt as e:
        log("interrupted: the checkpoint stays incomplete (no manifest.json); run the save again")
        return exit_code(e)
    except Exception as e:
        code = exit_code(e)
        if code == EXIT_FAILED:  # unexpected: the traceback says where
            import traceback
            traceback.print_exc()
            log(f"error: saving failed: {one_line(e)}")
        else:
            log(f"error: {one_line(e)}")
        return code
    print("\n" + saving.summary(manifest), file=sys.stderr)
    log(f"checkpoint complete: {os.path.join(cfg.model_path, 'manifest.json')}")
    return 0


def bench_main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    _env_only("deserialize_benchmark.py", "Time loading the saved checkpoint with each library, "
              "verify every tensor, and write one result document per library.", None,
              "MODEL_ID=random/gpt-j-6b CACHE_MODE=warm NUM_TRIALS=3 python deserialize_benchmark.py",
              argv)
    # No collection while torch and transformers import: their few hundred thousand objects were
    # walked by three full collections, 19% of a pod's time before its load (0.8 of 4.1 s, CPU
    # profile). The first library's prepare freezes what the imports made and turns it back on,
    # so every load runs with the collector as a user's process has it.
    gc.disable()
    try:
        from loadbench.measure import run
        return run.main(environ)
    finally:
        gc.enable()  # a pod that ended before its first prepare (config, checkpoint errors) too


def report_main(argv: list[str] | None = None) -> int:
    from loadbench.analysis.cli import main
    return main(argv)


def collect_main(argv: list[str] | None = None) -> int:
    from loadbench.cluster.cli import main
    return main(argv)


COMMANDS = {"save": save_main, "bench": bench_main, "report": report_main, "collect": collect_main}
PROG_OVERRIDE: list[str] = []  # `loadbench save --help` says `loadbench save`, not the script


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        print(f"loadbench {__version__}")
        return 0
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        asked = bool(args) and args[0] in ("-h", "--help")
        usage = [f"  loadbench {c} --help" for c in COMMANDS] + ["  loadbench --version"]
        print(__doc__.strip().split("\n\n")[0] + "\n\n" + "\n".join(usage),
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else EXIT_BAD_INPUT
    PROG_OVERRIDE.append(f"loadbench {args[0]}")
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
