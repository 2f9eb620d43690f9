"""``locloc <command>``: the command-line entry point.

Each command lives in ``locloc/commands/<name>.py`` and defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. User errors (:class:`LocLocError`) are
printed as one line on stderr with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import LocLocError

# Order shown in ``locloc --help``: the data flow of the method.
COMMANDS = (
    "make_synthetic",
    "masks",
    "train_generator",
    "train_classifier",
    "pipeline",
    "evaluate",
    "predict",
    "export",
    "app",
    "convert",
    "import_backbone",
    "demo",
)


def _load_commands() -> list:
    """Import every command module (a missing one is a packaging bug: it raises)."""
    return [importlib.import_module(f"locloc.commands.{name}") for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locloc",
        description="Weakly supervised object localization (LocLoc, ACM MM 2023): "
        "class labels in, classes and boxes out.",
    )
    parser.add_argument("--version", action="version", version=f"locloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except LocLocError as e:
        msg = str(e)
        if "Traceback" in msg:  # raised in a DataLoader worker: keep the original one line
            from .data.datasets import original_message

            msg = original_message(e)
        print(f"locloc {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"locloc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
