"""python -m loadbench.config --markdown: print the README's environment-variable table."""

from __future__ import annotations

import argparse
import sys

from loadbench.config.settings import markdown_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadbench.config", description=__doc__)
    ap.add_argument("--markdown", action="store_true", help="the env-var table as Markdown")
    ap.parse_args(argv)
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
