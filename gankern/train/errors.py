"""The exceptions a training run ends with, in a module of their own.

trainer.py (which raises TrainingDiverged in a step) and fit_loop.py (which re-raises it with the
checkpoint it kept, and raises TrainingInterrupted) both need them; keeping them here lets
trainer.py import fit_loop.py without fit_loop.py importing trainer.py back.
"""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/Inf; raised before the optimizer step that would apply it."""


class TrainingInterrupted(KeyboardInterrupt):
    """fit stopped on Ctrl-C / SIGTERM after writing a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
