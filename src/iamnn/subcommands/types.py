"""argparse types of the ``iamnn`` options: a value is checked when the command line is parsed,
so a bad one fails in one line before any data or weights load."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..errors import one_line


def count(low: int, high: int) -> Callable[[str], int]:
    """A whole number in ``low..high`` (``1e3``, ``-1``, ``2**70`` are refused in one line)."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number in {low}..{high}, got {text!r}")
        return int(text)

    return parse


def counts(low: int, high: int) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated whole numbers in ``low..high`` (``1,64,256``)."""

    def parse(text: str) -> tuple[int, ...]:
        return tuple(count(low, high)(part) for part in text.split(","))

    return parse


def width(text: str) -> float:
    """A width multiplier in (0, 64]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 64:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a width in (0, 64], got {text!r}")
    return value


def halting(text: str) -> str | int:
    """One halting policy for every stage (``act``, ``full``, k, ``cascade:…``) in its saved form;
    the error lists the valid forms (``models.halting.normalize_halting``'s)."""
    from ..models.halting import halting_json  # torch: imported only when --halting is given

    try:
        spec = halting_json(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(one_line(err)) from None
    if isinstance(spec, list):
        raise argparse.ArgumentTypeError(f"one halting policy for every stage, got {text!r}")
    return spec


def cascade(text: str) -> str:
    """A cascade whose thresholds ``iamnn calibrate`` chooses (``@…`` may be left out)."""
    from ..models.cascade import Cascade

    if not text.startswith("cascade:"):
        raise argparse.ArgumentTypeError(f"expected a cascade:PASS,PASS (e.g. cascade:1,flip-1), got {text!r}")
    try:
        if "@" not in text:  # thresholds to be chosen: every image runs every pass until then
            passes, *options = text.split(";")
            text = ";".join([f"{passes}@" + ",".join(["inf"] * passes.count(",")), *options])
        return Cascade.parse(text).spec
    except ValueError as err:
        raise argparse.ArgumentTypeError(one_line(err)) from None
