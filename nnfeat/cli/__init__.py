"""The ``nnfeat`` command line: a thin layer over the Python API.

Every command lives in one module of this package and is registered here explicitly (:data:`COMMAND_MODULES`):
a command module that fails to import is an error of ``nnfeat`` itself, never a missing command. Each module
has ``register(subparsers)``, which adds its commands with their shared options (:mod:`nnfeat.cli.common`).
Every command turns a user mistake into one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from nnfeat.cli import (atlas, attention, demo, examples, filters, graph, heatmap, logit_lens, microscope, models,
                        project, render, report, saliency, spectrum, uncertainty)
from nnfeat import distributed
from nnfeat.cli.common import (OneLineParser, check_option_ranges, command_line, out_of_memory_error, user_code_error,
                               user_files)
from nnfeat.errors import NnfeatError, nearest, shorten

#: The command modules, in the order ``nnfeat --help`` lists their commands.
COMMAND_MODULES = (models, graph, render, microscope, examples, atlas, heatmap, filters, project, saliency, attention,
                   logit_lens, uncertainty, report, spectrum, demo)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="nnfeat", description="See what neural networks learned.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A user mistake is one line on stderr and exit status 2, checked before any work: bad
    options, and exceptions raised inside the user's own files (a ``FILE.py:FACTORY`` model's forward, an
    ``--objective-file`` recipe); memory or disk running out is one line too. ``NNFEAT_DEBUG=1`` re-raises them with their traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m nnfeat -- COMMAND ...` (keeps torchrun from reading --n as its own)
        argv = argv[1:]
    parser = build_parser()
    problem = _unknown_command_message(parser, argv) or _minus_word_message(parser, argv)
    if problem:
        parser.error(problem)
    args, extra = parser.parse_known_args(render.leading_minus(argv))
    if extra:
        parser.error(_extra_words_message(parser, args, extra))
    args.command_line = command_line(argv)
    debug = os.environ.get("NNFEAT_DEBUG", "") not in ("", "0")
    ranks = distributed.init_from_env()  # torchrun: join the process group (a no-op in one process)
    try:
        check_option_ranges(args)
        return int(args.func(args) or 0)
    except NnfeatError as err:
        if debug:
            raise
        print(f"nnfeat: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `nnfeat models | head`: the reader left; say nothing more
        sys.stderr = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("nnfeat: interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the user's own code raised, memory or disk ran out; else re-raised
        one_line = user_code_error(err, user_files(args)) or out_of_memory_error(err) or disk_full_error(err, args)
        if one_line is None or debug:
            raise
        print(f"nnfeat: error: {one_line}", file=sys.stderr)
        return 2
    finally:
        if ranks.sharded:
            distributed.finish()


def disk_full_error(err: BaseException, args) -> NnfeatError | None:
    """A one-line error for a full disk (or quota) while writing, naming the folder and the space left there (None
    for any other exception). ``Result.save`` has already removed the files it wrote (no half set of outputs)."""
    if not (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)):
        return None
    folder = Path(err.filename).parent if isinstance(err.filename, str) else Path(getattr(args, "out", None) or ".")
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:.0f} MB free there"
    except OSError:
        free = "its free space unknown"
    what = "the disk is full" if err.errno == errno.ENOSPC else "the disk quota is used up"
    return NnfeatError(f"{what} while writing into '{folder}' ({free}): free some space there (or choose another "
                       "--out) and run the command again")


def _commands(parser: OneLineParser) -> dict[str, OneLineParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _subparser(parser: OneLineParser, command: str) -> OneLineParser | None:
    return _commands(parser).get(command)


def _unknown_command_message(parser: OneLineParser, argv: list[str]) -> str | None:
    """``nnfeat rendr ...``: the nearest command and the list (argparse's own line quotes every name)."""
    commands = list(_commands(parser))
    if not argv or argv[0].startswith("-") or argv[0] in commands:
        return None
    near = nearest(argv[0][:100], commands, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"unknown command '{shorten(argv[0], 60)}'{hint}; commands: {', '.join(commands)}"


def _minus_word_message(parser: OneLineParser, argv: list[str]) -> str | None:
    """For commands other than ``render`` (whose objective may start with ``-``: :func:`render.leading_minus`),
    a word like ``-layer3:5`` is neither an option nor a unit: say so, instead of argparse's "required: UNITS"."""
    sub = _subparser(parser, argv[0]) if argv and argv[0] != "render" else None
    if sub is None:
        return None
    options = {o for a in sub._actions for o in a.option_strings}
    for word in argv[1:]:
        if word == "--":
            return None
        if (len(word) > 1 and word[0] == "-" and word[1] != "-" and word.split("=")[0] not in options
                and not render._is_number(word)):
            return (f"'{shorten(word, 60)}' is not an option of `nnfeat {argv[0]}`, and units and layer names never "
                    f"start with '-' (to minimize a unit: `nnfeat render MODEL {shorten(word, 60)}`)")
    return None


def _extra_words_message(parser: OneLineParser, args, extra: list[str]) -> str:
    """What is wrong with the words argparse could not place: a second objective next to --objective-file, or
    unknown options (with the command's nearest option names)."""
    if getattr(args, "objective_file", None) and not any(w.startswith("-") for w in extra):
        return (f"give an objective expression or --objective-file, not both (got '{shorten(' '.join(extra), 60)}' "
                f"and --objective-file {shorten(args.objective_file, 60)})")
    sub = _subparser(parser, args.command)
    options = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for word in extra:
        near = nearest(word.split("=")[0], options, n=2) if word.startswith("--") else []
        if near:
            hints.append(f"{shorten(word, 40)} (did you mean {' or '.join(near)}?)")
    detail = "; ".join(hints) if hints else shorten(" ".join(extra))
    return f"unrecognized arguments: {detail}"


__all__ = ["COMMAND_MODULES", "build_parser", "main"]
