"""The ``nnfeat`` command line: a thin layer over the Python API.

Every command lives in one module of this package and is registered here explicitly (:data:`COMMAND_MODULES`):
a command module that fails to import is an error of ``nnfeat`` itself, never a missing command. Each module
has ``register(subparsers)``, which adds its commands with their shared options (:mod:`nnfeat.cli.common`).
Every command turns a user mistake into one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from nnfeat.cli import (atlas, attention, demo, examples, filters, graph, heatmap, models, project, render, report,
                        saliency, spectrum, uncertainty)
from nnfeat import distributed
from nnfeat.cli.common import OneLineParser, command_line
from nnfeat.errors import NnfeatError

#: The command modules, in the order ``nnfeat --help`` lists their commands.
COMMAND_MODULES = (models, graph, render, examples, atlas, heatmap, filters, project, saliency, attention,
                   uncertainty, report, spectrum, demo)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="nnfeat", description="See what neural networks learned.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(render.leading_minus(argv))
    args.command_line = command_line(argv)
    ranks = distributed.init_from_env()  # torchrun: join the process group (a no-op in one process)
    try:
        return int(args.func(args) or 0)
    except NnfeatError as err:
        print(f"nnfeat: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `nnfeat models | head`: the reader left; say nothing more
        sys.stderr = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("nnfeat: interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    finally:
        if ranks.sharded:
            distributed.finish()


__all__ = ["COMMAND_MODULES", "build_parser", "main"]
