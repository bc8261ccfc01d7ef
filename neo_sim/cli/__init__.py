"""`neo-sim`: what-if runs, policy comparisons, sweeps and cost-model inspection.

Each subcommand lives in its own module with `add_parser(subparsers)` and `run(args) -> int`.
Packages that build on neo_sim add commands through the `neo_sim.commands` entry-point group
(the engine adds `validate`), so that neo_sim never imports them. User mistakes raise NeoError
anywhere below; `main` prints them as one line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from neo_sim import __version__
from neo_sim.cli import compare, cost, plan, run, sweep
from neo_sim.errors import NeoError
from neo_sim.files import ensure_writable_dir

COMMANDS = [run, compare, sweep, plan, cost]
PLUGIN_GROUP = "neo_sim.commands"


def plugin_commands() -> list:
    """Command modules other packages register (pyproject `[project.entry-points]`)."""
    return [ep.load() for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name)]


EPILOG = """examples:
  neo-sim compare --hardware t4 --model llama-2-7b --policies gpu-only,neo
  neo-sim run --hardware a10g --model llama-3-8b --policy neo --rate 4 --output runs/a10g
  neo-sim plan --hardware t4 --model llama-2-7b --requests 64 --input-len 400 --output-len 50
  neo-sim cost --hardware t4 --model llama-2-7b --op cpu_decode_attn --sizes 1024,8192 --batch 8
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neo-sim",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"neo-sim {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS + plugin_commands():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        # Every command's --output is a results directory: checked before the work starts.
        if getattr(args, "output", None):
            ensure_writable_dir(Path(args.output), "results")
        return args.run(args)
    except NeoError as exc:
        print(f"neo-sim: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
