"""Where a signal cannot be raised: the command's handler sends it again a moment later from finalisers, from
importlib's lock callback and from inside an import (whose extension code may clear the exception or abort on it:
torch's does), and raises elsewhere."""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time

import pytest

from fba import cli

LOCK_CALLBACK = compile("def cb(work):\n    return work()\n", "<frozen importlib._bootstrap>", "exec")


def test_frames_that_cannot_take_an_exception_are_recognised(tmp_path, monkeypatch):
    class Finalised:
        def __del__(self):
            seen.append(cli._drops_exceptions(sys._getframe()))

    seen: list[bool] = []
    namespace: dict = {}
    exec(LOCK_CALLBACK, namespace)  # the shape of importlib's _get_module_lock callback, which Python calls as a
    assert namespace["cb"](lambda: cli._drops_exceptions(sys._getframe()))  # weakref callback: exceptions dropped
    Finalised()
    (tmp_path / "probe_inside_import.py").write_text(
        "import sys\nfrom fba import cli\nINSIDE = cli._drops_exceptions(sys._getframe())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.import_module("probe_inside_import").INSIDE
    assert seen == [True]
    assert not cli._drops_exceptions(sys._getframe())


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_a_signal_inside_an_import_arrives_after_it(tmp_path, monkeypatch):
    (tmp_path / "signalled_while_imported.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside the import\n"
        "time.sleep(0.05)\n"
        "FINISHED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import multiprocessing.util

    exiting = multiprocessing.util._exiting  # the handler marks this process as shutting down: undone below
    previous = signal.signal(signal.SIGINT, cli._shutting_down(signal.default_int_handler))
    imported = None
    try:
        with pytest.raises(KeyboardInterrupt):
            imported = importlib.import_module("signalled_while_imported")
            time.sleep(1)  # the signal sent again lands here
    finally:
        signal.signal(signal.SIGINT, previous)
        multiprocessing.util._exiting = exiting
        sys.modules.pop("signalled_while_imported", None)
    assert imported is not None and imported.FINISHED  # the import completed: nothing for C code to swallow
