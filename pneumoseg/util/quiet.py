"""``quiet_lightning()``: Lightning's chatter off for one ``with`` block, everything as it was after.

The one list of Lightning noise (training, the archive's predict loop and the demo use it; nothing
is changed at import). Inside the block:

- Lightning's INFO log lines are dropped: the loggers in :data:`LIGHTNING_LOGGERS` are raised to
  WARNING (a user's higher level stays). That hides its device lines ("GPU available: ...",
  "LOCAL_RANK: ..."), the cloud logger tip, the checkpoint path it restores from, why ``fit``
  stopped, its "Received SIGTERM" / "Detected KeyboardInterrupt" lines and its DDP set-up lines;
  pneumoseg says what matters itself, once. Lightning's warnings and errors still show.
- The warnings matching :data:`NOISE_WARNINGS` are ignored (``warnings.catch_warnings``: the
  previous filters come back on exit). Every other warning passes as before.

Both are process-wide state (``logging`` and ``warnings`` have no other kind): the block is meant for
the main thread around a Trainer's construction and run, not for concurrent use from threads.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["LIGHTNING_LOGGERS", "NOISE_WARNINGS", "quiet_lightning"]

#: the parents of every Lightning logger (the unified package and the standalone ones)
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

#: message regexes (``warnings.filterwarnings``, matched from the message's start) of Lightning's
#: warnings that say nothing a pneumoseg user can act on
NOISE_WARNINGS = (
    # Lightning 2.6 on torch 2.14 warns about its own use of a deprecated torch API on every fit
    r".*isinstance\(treespec, LeafSpec\)",
    # the module normalises batches on the device on purpose (uint8 loaders)
    r".*overridden `on_after_batch_transfer` in `LightningModule`",
    # resuming writes into the run's own checkpoint folder
    r".*exists and is not empty",
    # worker hints (data.num_workers / --workers are the user's choice), a GPU left idle on purpose
    # (--accelerator cpu), the archive's IterableDataset without a length, predict-loop details
    r".*(does not have many workers|IterableDataset|GPU available but not used|predict_dataloader|num_nodes"
    r"|infer the batch indices)",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's INFO lines and its :data:`NOISE_WARNINGS` inside the block (module docstring).

    On exit (also on an exception) every logger's level and the warning filters are what they were.
    """
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            if lg.getEffectiveLevel() < logging.WARNING:
                lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for pattern in NOISE_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
