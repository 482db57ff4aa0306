"""The ``iamnn`` command: it parses, dispatches to the command's handler, and reports errors in one line.

``iamnn fit|validate|test`` are LightningCLI subcommands (YAML recipes, every Trainer flag). The
others are declared as data in :mod:`iamnn.subcommands` (``COMMANDS``): their own options, and which
of the option groups below they take; each group is declared once here. A handler calls the
module that does the work (``weights.resolve``, ``bench.benchmark``, ``report.build_report`` …)
and prints its result. Handlers are imported when their command runs, so a command loads only
what it uses: Lightning alone takes about 2 s to import on 2 cores, which ``iamnn --help``, a
parse error or ``iamnn predict`` should not pay.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import CLIError, IamNNError, one_line
from .files import check_output_file
from .runtime import keep_freed_memory
from .subcommands import COMMANDS, EXAMPLES, LIGHTNING_COMMANDS, SHIPPED, Command, Halting, types

__all__ = ["EXAMPLES", "LIGHTNING_COMMANDS", "build_parser", "main"]


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (``iamnn export: error: … (see: iamnn export --help)``), exit 2,
    instead of the usage block followed by the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# -- option groups: each declared once, added to every command that names it in COMMANDS -------------
SOURCE_FORMS = {"ckpt": "--ckpt RUN", "weights": "--weights FILE", "pretrained": "--pretrained [--model NAME]"}
PRETRAINED_HELP = {
    "required": f"the shipped weights (of --model, default {SHIPPED})",
    "run": f"or the shipped weights (of --model, default {SHIPPED})",
    "shipped": f"the shipped weights of --model (default {SHIPPED}; the default without --weights)",
    "untrained": "the weights shipped for --model instead of an untrained one",
}
MODEL_HELP = {
    "untrained": f"registered model (default {SHIPPED}): untrained, or with --pretrained its shipped weights",
}


def add_source(p: argparse.ArgumentParser, kind: str) -> None:
    """Which model a command uses: ``--weights FILE | --pretrained [--model NAME]`` (and ``--ckpt
    RUN`` for ``kind`` "run"), read by ``weights.resolve``; :func:`check_source` allows one."""
    group = p.add_argument_group("model (one of)")
    if kind == "run":
        group.add_argument("--ckpt", metavar="RUN", help="a run directory, or a weights/checkpoint file inside one")
    group.add_argument("--weights", metavar="FILE",
                       help="safetensors weights or Lightning .ckpt (loaded without running pickle code)")  # fmt: skip
    group.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP[kind])
    group.add_argument("--model", metavar="NAME", help=MODEL_HELP.get(kind, "registered model name, with --pretrained"))
    p.set_defaults(source_kind=kind)


def check_source(args: argparse.Namespace) -> None:
    """At most one model source, and one where the command has no default (CLIError, one line)."""
    kind = getattr(args, "source_kind", None)
    if kind is None:
        return
    forms = [form for key, form in SOURCE_FORMS.items() if key != "ckpt" or kind == "run"]
    given = sum(bool(getattr(args, key, None)) for key in SOURCE_FORMS)
    if given > 1 or (given == 0 and kind in ("required", "run")):
        raise CLIError(f"give one of {', '.join(forms[:-1])} or {forms[-1]}")


def add_halting(p: argparse.ArgumentParser, halting: Halting) -> None:
    """``--halting``, parsed when the arguments are: a bad value fails in one line naming the valid
    forms, before any data or weights load."""
    p.add_argument("--halting", type=halting.type, required=halting.required, default=None, help=halting.help)


def add_test_subset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-subset", type=types.count(1, 10**9), default=None, metavar="N",
                   help="evaluate on the first N test images only")  # fmt: skip


def add_json(p: argparse.ArgumentParser, example: str = "") -> None:
    """``--json [FILE.json]``, one meaning in every command (:func:`json_words` reads its value)."""
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="FILE.json",
        help="print the result as JSON on stdout instead of the table; --json FILE.json (a name ending in "
        ".json) prints the table and writes the JSON there" + (f" (e.g. {example})" if example else ""),
    )  # fmt: skip


def json_words(argv: list[str]) -> list[str]:
    """``--json``'s value, one rule for every command: the word after it is its FILE only when
    that word ends in ``.json`` (or is ``-``); any other word (an image, a run folder, a pattern)
    is the command's own, and ``--json`` is bare. So ``iamnn predict --json a.png`` classifies
    a.png, and no image or folder is ever written over by a result. ``--json=NAME`` is always a FILE."""
    out = list(argv)
    for i, word in enumerate(argv[:-1]):
        following = argv[i + 1]
        if word == "--json" and not following.startswith("-") and not following.lower().endswith(".json"):
            out[i] = "--json=-"
        if word == "--":
            break
    return out


# -- the parser ----------------------------------------------------------------------------------
def epilog(command: str) -> str:
    """``command``'s examples, the end of its ``--help`` (kept as lines: RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])


def add_command(sub: argparse._SubParsersAction, name: str, command: Command) -> None:
    """The subcommand ``name``: its own arguments, then the option groups it names."""
    p = sub.add_parser(name, help=command.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n\n".join(filter(None, (command.epilog, epilog(name)))))  # fmt: skip
    for flags, options in command.arguments:
        p.add_argument(*flags, **options)
    if command.source:
        add_source(p, command.source)
    if command.halting:
        add_halting(p, command.halting)
    if command.test_subset:
        add_test_subset(p)
    if command.json is not None:
        add_json(p, command.json)
    p.set_defaults(handler=command.handler, **command.defaults)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="iamnn",
        description="IamNN, ResNets whose stages iterate one shared block and halt per image: train, evaluate, "
        "explore, export and time them. `iamnn COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"iamnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in LIGHTNING_COMMANDS:  # their --help is LightningCLI's (run_lightning_cli)
        sub.add_parser(name, help=f"LightningCLI {name} (see `iamnn {name} --help`)", add_help=False)
    for name, command in COMMANDS.items():
        add_command(sub, name, command)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments of a non-Lightning command, every check that needs no data done."""
    words = json_words(argv) if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].json is not None else argv
    args, extra = build_parser().parse_known_args(words)
    if extra and not hasattr(args, "overrides"):  # only `iamnn demo` passes arguments on (to LightningCLI)
        not_json = [w for i, w in enumerate(argv[1:]) if words[i] == "--json=-" and argv[i] == "--json"]
        hint = " (--json takes a FILE whose name ends in .json, or --json=NAME)" if set(not_json) & set(extra) else ""
        raise CLIError(f"unrecognized arguments: {' '.join(extra)}{hint} (see: iamnn {args.command} --help)")
    if extra:
        args.overrides = extra
    check_source(args)
    if getattr(args, "json", None) not in (None, "-"):
        try:  # a result file is rewritten; never a folder or a symlink
            check_output_file(args.json, force=True)
        except ValueError as err:
            raise CLIError(str(err)) from None
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    keep_freed_memory()  # freed activation maps are reused instead of unmapped (iamnn/runtime.py)
    # a file name that is not UTF-8 reaches Python as surrogate escapes, which stdout's strict
    # encoder refuses mid-table; printed as \udcff instead (stderr already does this)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        if command in LIGHTNING_COMMANDS:
            from .training.lightning_cli import run_lightning_cli

            run_lightning_cli(argv, epilogs={name: epilog(name) for name in LIGHTNING_COMMANDS})
            return
        args = parse(argv)
        module, _, function = args.handler.partition(":")
        getattr(importlib.import_module(f"{__package__}.subcommands.{module}"), function)(args)
        sys.stdout.flush()  # a full disk under stdout (`> /dev/full`) is seen here, not at exit
    except IamNNError as err:
        print(f"iamnn {command}: error: {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    except argparse.ArgumentError as err:  # a bad recipe key or flag value (LightningCLI)
        print(f"iamnn {command}: error: {one_line(err)} (see: iamnn {command} --help)", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `iamnn profile --json | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail
        sys.exit(1)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk: the atomic writes leave nothing half-written; say so in one line, not 80
        with contextlib.suppress(OSError, ValueError):  # stdout may be a pipe to nowhere, or no file at all
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = f" writing {err.filename}" if err.filename else ""
        print(f"iamnn {command}: error: no space left on the device{where}; nothing was half-written", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
