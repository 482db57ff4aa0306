"""What every command's handler shares: one meaning of ``--json``, the model source as
``weights.resolve`` reads it, and printing (numbers, names from files, tables)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from ..errors import CLIError
from ..files import check_output_file, write_text_atomic
from . import SHIPPED

if TYPE_CHECKING:
    from ..weights import Resolved


def human(n: float | int | None, unit: str = "") -> str:
    """12_345_678 -> '12.35 M'."""
    if n is None:
        return "–"
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def printable(text: object) -> str:
    """Text from a file or a path with its control characters (ESC, newlines) written as escapes,
    so that a class name or a file name cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def shown(text: object) -> str:
    """:func:`printable`, and its ``[...]`` shown as written rather than read as rich markup."""
    return escape(printable(text))


def console() -> Console:
    """A console wide enough for the tables even when stdout is a pipe (CI logs, ``| tee``)."""
    out = Console()
    return out if out.is_terminal else Console(width=160)


def show(result: object, json_to: str | None, table: Callable[[], None], wrote: Sequence[str] = ()) -> None:
    """A result as ``--json`` means it for every command: ``-`` (a bare ``--json``) prints it as
    JSON on stdout instead of the table, the ``wrote`` lines going to stderr; a PATH prints the
    table and the ``wrote`` lines, then writes the JSON there; None: the table alone."""
    if json_to == "-":
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        for line in wrote:
            print(line, file=sys.stderr)
        return
    table()
    for line in wrote:
        print(line)
    if json_to:
        write_text_atomic(json_to, json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_to}")


def output_file(path: str | Path, force: bool = False, sidecars: tuple[str, ...] = ()) -> Path:
    """``files.check_output_file`` as one line: before any work, never over a user's file unasked."""
    try:
        return check_output_file(path, force, sidecars)
    except ValueError as err:
        raise CLIError(str(err)) from None


def load(args: argparse.Namespace) -> Resolved:
    """The model of ``--weights FILE`` or ``--pretrained [--model NAME]`` (the shipped model by
    default), read by ``weights.resolve``; a ``WeightsError`` is the command's one-line error."""
    from ..weights import resolve

    if args.weights:
        return resolve(args.weights)
    return resolve(args.model or SHIPPED, pretrained=True)


def source_text(loaded: Resolved, as_given: str | None = None) -> str:
    """The weights ``loaded`` holds, in words, for a result to name: the shipped weights of a
    model, or a file (``as_given`` on the command line; a run's as ``runs.describe_weights`` says)."""
    from ..runs import describe_weights

    if loaded.shipped:
        return f"shipped {loaded.shipped}"
    return describe_weights(as_given or loaded.path, within_run=False)


def note_other_regime(command: str, model: Any, halting: Any, fix: str) -> None:
    """One stderr line when ``halting`` is another regime than the model's own, naming ``fix``."""
    from ..models.halting import other_regime_note

    if note := other_regime_note(model.halting, halting):
        print(f"iamnn {command}: note: {note}: {fix}", file=sys.stderr)
