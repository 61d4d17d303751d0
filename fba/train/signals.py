"""SIGINT / SIGTERM during training: finish the current step, write a checkpoint, say how to resume, exit 130/143.

Schedulers send SIGTERM some time before they kill a job, and Ctrl-C sends SIGINT. :class:`StopRequest` turns
either into a flag the training loop reads after each optimiser step; the loop then writes a checkpoint of that
step and raises :class:`TrainingInterrupted`, which ``fba train`` turns into the ``--resume`` command and exit
status 128 + the signal's number. A second signal of the same kind while stopping acts at once (the default
handler). With several ranks the flag is agreed on (all-reduced) at the logging interval, so every rank stops at
the same step (docs/reliability.md, "Signals").
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """Installs handlers for SIGINT and SIGTERM (main thread only) that record the signal; restores them on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        try:
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals stay with whoever handles them there
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current step, then writing a checkpoint "
              "(send it again to stop at once)", flush=True)

    def stops_here(self, world_size: int, last: bool, sync_now: bool) -> bool:
        """Whether the run stops after this optimiser step: a signal all ranks agree on, except at the epoch's
        last step, whose signal the epoch end handles after its checkpoint."""
        return not last and self.agreed(world_size, sync_now) is not None

    def agreed(self, world_size: int, sync_now: bool) -> int | None:
        """The signal to stop on, the same on every rank: with several ranks only when ``sync_now``."""
        if world_size == 1:
            return self.signum
        if not sync_now:
            return None
        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None
