"""When the training loop saves, evaluates and stops: each a component that owns its own decision, so the loop
asks (``checkpoints.maybe_save(...)``, ``evaluation.due(...)``) instead of deciding every cadence itself."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StepCheckpoints:
    """Mid-epoch checkpoints every ``every`` optimiser steps (``train.checkpoint_every``; 0: none). The epoch's
    last step is left to the epoch-end checkpoint, which the loop writes anyway."""

    save: Callable[[int], Path]  # epoch_step -> the checkpoint written
    every: int

    def maybe_save(self, step: int, epoch_step: int, last: bool) -> Path | None:
        if self.every and step % self.every == 0 and not last:
            return self.save(epoch_step)
        return None


@dataclass(frozen=True)
class EvaluationCadence:
    """An evaluation after every ``every`` epochs (``train.eval_every``) and after the final one."""

    every: int

    def due(self, epoch: int, final: bool) -> bool:
        return final or (epoch + 1) % self.every == 0
