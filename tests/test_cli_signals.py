"""Where a signal would be lost: the command's handler sends it again a moment later from finalisers and from an
extension module's initialisation (whose C code may clear the exception: torch's does), and raises elsewhere."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from fba import cli

EXTENSION_INIT = compile("def create_module(work):\n    return work()\n", "<frozen importlib._bootstrap_external>",
                         "exec")


LOCK_CALLBACK = compile("def cb(work):\n    return work()\n", "<frozen importlib._bootstrap>", "exec")


def _as_extension_init():
    namespace: dict = {}
    exec(EXTENSION_INIT, namespace)
    return namespace["create_module"]


def test_frames_that_drop_exceptions_are_recognised():
    create_module = _as_extension_init()

    class Finalised:
        def __del__(self):
            seen.append(cli._drops_exceptions(sys._getframe()))

    seen: list[bool] = []
    assert create_module(lambda: cli._drops_exceptions(sys._getframe()))
    namespace: dict = {}
    exec(LOCK_CALLBACK, namespace)  # the shape of importlib's _get_module_lock callback, which Python calls as a
    assert namespace["cb"](lambda: cli._drops_exceptions(sys._getframe()))  # weakref callback: exceptions dropped
    Finalised()
    assert seen == [True]
    assert not cli._drops_exceptions(sys._getframe())


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_a_signal_inside_an_extensions_init_arrives_after_it():
    create_module = _as_extension_init()
    raised_inside = []

    def work():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside the "extension's init"
            time.sleep(0.05)
        except KeyboardInterrupt:
            raised_inside.append(True)
            raise
        return "finished"

    import multiprocessing.util

    exiting = multiprocessing.util._exiting  # the handler marks this process as shutting down: undone below
    previous = signal.signal(signal.SIGINT, cli._shutting_down(signal.default_int_handler))
    try:
        with pytest.raises(KeyboardInterrupt):
            assert create_module(work) == "finished"  # the init completes: nothing for C code to swallow
            time.sleep(1)  # the signal sent again lands here
    finally:
        signal.signal(signal.SIGINT, previous)
        multiprocessing.util._exiting = exiting
    assert raised_inside == []
