"""The errors every layer may raise, and how each becomes one line for the user.

A leaf: it imports nothing of iamnn, so the lowest layer (data, weights) and the highest (the CLI)
can share these classes without importing each other. ``iamnn`` commands print an ``IamNNError``
as ``iamnn <command>: error: <one line>`` with exit code 2, never as a traceback.
"""

from __future__ import annotations


class IamNNError(RuntimeError):
    """An error the user can act on, reported as one line."""

    def __init__(self, *args: object) -> None:
        # A DataLoader worker's error is raised again in the main process as its type built from the
        # worker's whole traceback as text ("Caught DatasetError in DataLoader worker process 1.
        # Original Traceback ..."): the message is its last line's, after the type's name.
        if len(args) == 1 and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            args = (args[0].rstrip().splitlines()[-1].split(": ", 1)[-1],)
        super().__init__(*args)


class CLIError(IamNNError):
    """A command line that cannot be carried out (a missing folder, a bad option value, …)."""


class WeightsError(IamNNError):
    """A weights file that cannot be used: unreadable, unsafe, or for another architecture."""


class RunFolderError(IamNNError):
    """A run folder that is missing, or a folder that holds no run of ``iamnn fit``."""


class BenchError(IamNNError):
    """A benchmark that cannot run as asked: a device this machine lacks, options that do not go together."""


class TrainingDivergedError(IamNNError):
    """The training loss became NaN or infinite: training stops, and no weights are written."""


class RunInterrupted(IamNNError):
    """A run stopped by SIGTERM (``timeout``, SLURM, ``kill``): not a success, so not exit code 0."""

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class DatasetError(IamNNError):
    """A dataset is missing or malformed."""


class DatasetNotFoundError(DatasetError):
    """A dataset was not found in any of the places looked in."""


def one_line(err: BaseException) -> str:
    """The reason in ``err`` as one line.

    jsonargparse explains a failed value over many lines (one per type it tried); the reason is the
    first tried type that is not ``NoneType``. Other errors give their first line, followed by the
    next ones while a line ends in ``:`` (it announces the next), or their type's name when they
    carry no message.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    reasons = [line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line]
    if reasons and "Union subtypes" in lines[0]:
        return reasons[0]
    end = 1  # a line ending in ":" announces the next: "Error downloading x:", "Tried …, got:", "<reason>"
    while end < len(lines) and lines[end - 1].endswith(":"):
        end += 1
    return " ".join(lines[:end])[:400] if end > 1 else lines[0]
