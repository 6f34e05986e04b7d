"""``perception-r1``: one entry point, one module per subcommand family (``perception_r1/commands``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import CommandError

# subcommand module -> registered lazily so `perception-r1 score` never imports eval/plotting code.
COMMAND_MODULES = (
    "perception_r1.commands.score",
    "perception_r1.commands.tasks",
    "perception_r1.commands.rollouts",
    "perception_r1.commands.data",
    "perception_r1.commands.annotate",
    "perception_r1.commands.judge",
    "perception_r1.commands.eval",
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from .commands.common import Parser

    parser = Parser(prog="perception-r1", description=__doc__)
    parser.add_argument("--version", action="version", version=f"perception-r1 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv else None
    for module_name in COMMAND_MODULES:
        short = module_name.rsplit(".", 1)[1]
        # Only import the module for the command being run (fast startup); all of them for --help.
        if wanted is not None and not wanted.startswith("-") and wanted != short:
            subparsers.add_parser(short, add_help=False)
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpx2", "openai", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except CommandError as exc:
        print(f"perception-r1 {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
