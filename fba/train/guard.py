"""Divergence guard: a run that has stopped learning stops, instead of finishing and reporting a mAP.

Three signs, each checked where the trainer already has the number on the host (no extra device sync):
a non-finite loss, more than ``train.max_skipped_steps`` optimiser steps in a row skipped by DeepSpeed (fp16
overflow, or non-finite gradients), and a logged loss above ``train.divergence_factor`` times the first logged loss
of the run. The run stops with :class:`TrainingDiverged` naming the epoch, step and reason; no checkpoint is written
at that point, so the last good one stays ``latest`` (docs/reliability.md, "Divergence").
"""
from __future__ import annotations

import math

EXIT_DIVERGED = 3


class TrainingDiverged(FloatingPointError):
    """The training loss or the optimiser's steps show the run diverged; the message says where and why."""

    exit_code = EXIT_DIVERGED


class DivergenceGuard:
    def __init__(self, divergence_factor: float, max_skipped_steps: int, skipped_so_far: int = 0,
                 early_loss: float | None = None, has_checkpoint: bool = False):
        self.divergence_factor = divergence_factor
        self.max_skipped_steps = max_skipped_steps
        self.early_loss = early_loss  # the run's first logged loss (kept in checkpoints, so a resume compares to it)
        self._skipped_total = skipped_so_far
        self._skipped_in_a_row = 0
        self.has_checkpoint = has_checkpoint  # a resumed run has one; the trainer sets it when it writes one

    def kept(self) -> str:
        """What the stop leaves behind, said truthfully: a run stopped before its first checkpoint has none."""
        if self.has_checkpoint:
            return "The last good checkpoint is kept (--resume starts from it)"
        return "No checkpoint was written yet: a rerun starts from the beginning"

    def after_step(self, skipped_total: int, epoch: int, step: int) -> None:
        """Call after every optimiser step with DeepSpeed's running count of skipped steps."""
        if skipped_total > self._skipped_total:
            self._skipped_in_a_row += skipped_total - self._skipped_total
        else:
            self._skipped_in_a_row = 0
        self._skipped_total = skipped_total
        if self.max_skipped_steps > 0 and self._skipped_in_a_row > self.max_skipped_steps:
            raise TrainingDiverged(
                f"training stopped at epoch {epoch + 1}, step {step}: the optimiser skipped the last "
                f"{self._skipped_in_a_row} steps (overflowing or non-finite gradients; train.max_skipped_steps="
                f"{self.max_skipped_steps}); lower solver.base_lr or set solver.grad_clip. "
                f"{self.kept()}"
            )

    def check_loss(self, loss: float, epoch: int, step: int) -> None:
        """Call with each logged (interval-mean) training loss."""
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss is {loss} at step {step} (epoch {epoch + 1}): lower solver.base_lr, set "
                "solver.grad_clip, or train with train.precision=fp32. "
                f"{self.kept()}"
            )
        if self.early_loss is None:
            self.early_loss = loss
        elif self.divergence_factor > 0 and loss > self.divergence_factor * self.early_loss:
            raise TrainingDiverged(
                f"training stopped at epoch {epoch + 1}, step {step}: the loss {loss:.4g} grew past "
                f"train.divergence_factor={self.divergence_factor:g} times its early value {self.early_loss:.4g}; "
                "lower solver.base_lr or set solver.grad_clip. "
                f"{self.kept()}"
            )
