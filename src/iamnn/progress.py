"""Progress bars with ETA for the commands that take minutes (report, calibrate, frontier, bench),
and a spinner for a step of unknown length (the ONNX export).

One rich display on stderr, shared by nested tasks: a command's outer loop (regimes, run folders,
bisection steps) and the batches of the evaluation inside it each get a line, and each line goes
away when its task ends. Nothing is drawn when stderr is not a terminal (logs and pipes stay clean),
or with ``IAMNN_PROGRESS=0``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
_display: Progress | None = None
_open_tasks = 0


def console() -> Console:
    return Console(stderr=True)


def enabled() -> bool:
    """Bars are drawn only for a person watching a terminal."""
    return os.environ.get("IAMNN_PROGRESS", "1") != "0" and sys.stderr.isatty()


@contextmanager
def task(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A progress line for the duration of the block; yields ``advance(n=1)``."""
    global _display, _open_tasks
    if not enabled():
        yield lambda n=1: None
        return
    if _display is None:
        _display = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console(), transient=True,
        )  # fmt: skip
        _display.start()
    display = _display
    _open_tasks += 1
    handle = display.add_task(description, total=total)
    try:
        yield lambda n=1: display.advance(handle, n)
    finally:
        display.remove_task(handle)
        _open_tasks -= 1
        if _open_tasks == 0:
            display.stop()
            _display = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """``items``, one progress step each (``total`` defaults to ``len(items)`` where it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(description, total) as advance:
        for item in items:
            yield item
            advance(1)


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with ``message`` for the duration of the block: a step whose length is unknown."""
    if not enabled() or _display is not None:  # rich draws one live display at a time: inside a bar, no spinner
        yield
        return
    with console().status(message):
        yield
