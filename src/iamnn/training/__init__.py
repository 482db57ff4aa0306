"""Training: ``iamnn fit|validate|test``.

- ``classifier``: the LightningModule (``Classifier``): loss, optimiser, schedule, metrics.
- ``callbacks``: what the Trainer is handed besides it (MACs summary, epoch lines, exported weights, …).
- ``checkpoint_io``: crash-safe checkpoint writes, reads without pickle.
- ``recipes``: checks of a command line and its ``--config`` recipes before LightningCLI reads them.
- ``lightning_cli``: ``IamNNCLI`` and ``run_lightning_cli``, which ``iamnn.cli`` calls.

Import from the module that defines a name (``iamnn.lit`` re-exports them for old run folders).
"""
