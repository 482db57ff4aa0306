"""Where the training code lived before :mod:`iamnn.training`; kept so that old names still load.

Run folders' ``config.yaml`` written before the move name ``iamnn.lit.SafeCheckpointIO`` as a
Trainer plugin, and code outside this repository may import ``iamnn.lit.Classifier``: both resolve
to the same objects as their new homes. New code imports from ``iamnn.training.*``.
"""

from __future__ import annotations

from .training.callbacks import (
    RESUME_HISTORY,
    EpochLines,
    EpochSeed,
    ExportWeights,
    KeepTrainingHistory,
    MACsSummary,
    NameTestedWeights,
    NoteInterruption,
)
from .training.checkpoint_io import SafeCheckpointIO
from .training.classifier import Classifier, ResumableOneCycleLR
from .training.lightning_cli import IamNNCLI, RawEpilogHelpFormatter, run_lightning_cli
from .training.recipes import BATCH_COUNT_FLAGS, check_recipes, given_batch_counts

__all__ = [
    "BATCH_COUNT_FLAGS",
    "RESUME_HISTORY",
    "Classifier",
    "EpochLines",
    "EpochSeed",
    "ExportWeights",
    "IamNNCLI",
    "KeepTrainingHistory",
    "MACsSummary",
    "NameTestedWeights",
    "NoteInterruption",
    "RawEpilogHelpFormatter",
    "ResumableOneCycleLR",
    "SafeCheckpointIO",
    "check_recipes",
    "given_batch_counts",
    "run_lightning_cli",
]
