"""The ``iamnn`` command.

``iamnn fit|validate|test`` are LightningCLI subcommands (YAML recipes, every Trainer flag);
the others (``profile``, ``report``, ``predict``, ``demo``) are plain argparse subcommands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

LIGHTNING_COMMANDS = ("fit", "validate", "test")


class CLIError(Exception):
    """An error reported as one line on stderr, with exit code 2 and no traceback."""


def human(n: float | int | None, unit: str = "") -> str:
    """12_345_678 -> '12.35 M'."""
    if n is None:
        return "–"
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _console() -> Console:
    """A console wide enough for the tables even when stdout is a pipe (CI logs, ``| tee``)."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


# -- profile -------------------------------------------------------------------------------------
def _profile(args: argparse.Namespace) -> None:
    from .profile import profile_table1

    rows = profile_table1(args.width)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Table 1 models: ours beside the paper's (IamNN width x{args.width:g})")
    for col in ("dataset", "network", "input", "params", "paper params", "MACs 1 iter", "MACs max", "paper MACs"):
        table.add_column(col, justify="left" if col in ("dataset", "network") else "right")
    for r in rows:
        table.add_row(
            r["dataset"],
            f"{r['network']} ({r['model']})",
            f"{r['in_chans']}x{r['input_size']}²",
            human(r["params"]),
            r["paper_params"],
            human(r["macs_1_iter"]),
            human(r["macs_max"]),
            r["paper_macs"],
        )
    _console().print(table)
    print(
        "MACs = multiply-accumulates of convolutions and linear layers (FlopCounterMode / 2). "
        "'MACs max' of an ACT model includes its halting units."
    )


# -- entry point ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iamnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (see `iamnn {name} --help`)", add_help=False)

    p = sub.add_parser("profile", help="params and MACs of every Table-1 model, ours beside the paper's")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the IamNN rows (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from .lit import run_lightning_cli

        run_lightning_cli(argv)
        return
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CLIError as err:
        print(f"iamnn {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
