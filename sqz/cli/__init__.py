"""The ``sqz`` command: the parser, and one module per command.

A command that does work checks its input (one-line errors), builds its config and
calls one Prefect flow (flows/, imported only then); read-only commands (inspect, models,
runs ls/show) call sqz's core. This package imports neither torch nor Ray nor Prefect at
module level, so ``sqz --help`` and input errors answer without loading them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sqz.cli import data, import_dc, inspect, models, report, run, runs, sensitivity, sweep, train
from sqz.cli import eval as evaluate  # a module named after its command; `eval` would shadow the builtin
from sqz.cli.args import Parser
from sqz.cli.examples import attach_examples
from sqz.cli.flowrun import prefect_defaults
from sqz.logs import configure_console

__all__ = ["main", "build_parser", "prefect_defaults"]

# Each command's module: add_parser(sub) registers it, command(args) runs it.
_COMMANDS = {"run": run, "train": train, "sweep": sweep, "sensitivity": sensitivity, "eval": evaluate,
             "import-dc": import_dc, "data": data, "report": report, "inspect": inspect, "models": models,
             "runs": runs}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sqz", description="SqueezeNet + Deep Compression: train with Ray Train, sweep "
                    "pruning x bits with Ray Tune, chained as Prefect flows, real bytes on disk.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (run, inspect, report, sweep, sensitivity, models, data, evaluate, import_dc, train, runs):
        if module in (data, runs):
            module.add_parser(sub, Parser)  # they have subcommands of their own
        else:
            module.add_parser(sub)
    attach_examples(parser)
    return parser


_build_parser = build_parser  # the name tests and tools used before the package


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console()  # sqz's progress lines (sqz.train, sqz.sweep, ...) on stderr
    try:
        return _COMMANDS[args.command].command(args)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: one line naming what was wrong, no traceback.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sqz {args.command}: error: {message}", file=sys.stderr)
        return 2
