"""Processes end with the process that started them.

A DataLoader worker blocked on a full result pipe, or a torchrun rank whose launcher was SIGKILLed, outlives its
parent: nothing reads its pipe and nothing signals it. A daemon thread in the child polls its parent's pid and
ends the child once the parent is gone (a pid that changes means the parent ended and the child was re-parented).
It is a thread, not Linux's ``PR_SET_PDEATHSIG``, because that fires when the parent *thread* that forked ends,
which a loader iterated on a short-lived thread would turn into a killed worker.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

POLL_S = 0.5


def end_with_parent(parent: int, signum: int = signal.SIGTERM, poll_s: float = POLL_S) -> None:
    """When ``parent`` is no longer this process's parent, send ``signum`` to this process (SIGTERM lets it
    unwind and remove its temporaries; SIGKILL for a worker with nothing to clean)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signum)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


class WorkerEndsWithParent:
    """A DataLoader ``worker_init_fn``: the worker ends (SIGKILL) when the process that built the loader is gone,
    and its resource-sharer thread (which hands batches' file descriptors to the parent) stays quiet when the
    parent stops reading mid-handover, as a parent stopped by a signal does: its one line is the last word.
    A class, not a closure, so spawned workers can unpickle it."""

    def __init__(self) -> None:
        self.parent = os.getpid()

    def __call__(self, worker_id: int) -> None:
        end_with_parent(self.parent, signal.SIGKILL)
        sys.excepthook = _quiet_on_a_lost_reader(sys.excepthook)


def _quiet_on_a_lost_reader(hook):
    """The worker's excepthook, silent for the connection errors of a reader that went away (a worker's own
    errors reach the parent through the DataLoader, not through this hook)."""

    def excepthook(kind, value, traceback) -> None:
        if not issubclass(kind, (ConnectionError, EOFError)):
            hook(kind, value, traceback)

    return excepthook
