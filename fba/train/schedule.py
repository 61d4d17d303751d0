"""The learning-rate schedule of docs/design.md#training-recipe as a function of the fractional epoch, per iteration.

Linear warm-up from ``warmup_factor x base`` to ``base`` over ``warmup_epochs``, then cosine from ``base`` to
``final_factor x base`` at ``epochs``. The P x K sampler's epoch length varies by a few batches from one epoch
to the next, so the schedule is not a function of a fixed ``iters_per_epoch``: the trainer tells the scheduler
each epoch's length (``begin_epoch``) and step ``i`` of epoch ``e`` of length ``n`` gets the factor at
``e + i / n``. Every epoch thus starts exactly on its point of the curve, whatever the lengths before it.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fba.config import SolverConfig


def lr_factor(progress: float, cfg: SolverConfig) -> float:
    """Multiplier of ``base_lr`` at ``progress`` epochs (a float) into training."""
    warmup = max(cfg.warmup_epochs, 0)
    if progress < warmup:
        return cfg.warmup_factor + (1.0 - cfg.warmup_factor) * progress / warmup
    span = cfg.epochs - warmup
    if span <= 0:
        return 1.0
    t = min(max((progress - warmup) / span, 0.0), 1.0)
    return cfg.final_factor + (1.0 - cfg.final_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


class EpochCosineSchedule(LRScheduler):
    """Per-iteration scheduler (docs/design.md#training-recipe); DeepSpeed calls ``step()`` after each optimiser step.

    Its state (epoch, epoch length, the step that began the epoch) is in ``state_dict`` so a resumed run
    continues on the same curve.
    """

    def __init__(self, optimizer: Optimizer, cfg: SolverConfig, last_epoch: int = -1):
        self.cfg = cfg
        self.epoch = 0
        self.epoch_length = 1
        self.epoch_start = 0
        super().__init__(optimizer, last_epoch)

    def begin_epoch(self, epoch: int, length: int) -> None:
        """Call before the first step of ``epoch``, which will have ``length`` optimiser steps (not on a mid-epoch
        resume: the restored state already holds the epoch)."""
        if length < 1:
            raise ValueError(f"epoch {epoch} has no optimiser step (length {length})")
        self.epoch, self.epoch_length, self.epoch_start = int(epoch), int(length), self.last_epoch
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    @property
    def progress(self) -> float:
        """Fractional epoch of the next optimiser step."""
        return self.epoch + (self.last_epoch - self.epoch_start) / self.epoch_length

    def get_lr(self) -> list[float]:
        factor = lr_factor(self.progress, self.cfg)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("cfg", None)
        return state
