"""The ``fba`` command: one sub-command per job, each a light module of :mod:`fba.commands`.

A command module gives ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int | None``, and imports the code
that does the work only inside ``run``: ``fba <command> --help`` never pays for torch, DeepSpeed or DALI, and
``fba synth`` never for a model. Bad input (``fba.errors.InputError``) is printed on one line and exits 2;
anything else keeps its traceback. SIGINT and SIGTERM at any moment after start-up (imports included) unwind the
command like an exception, so its temporaries are removed and its DataLoader workers stopped, and exit 130 / 143
on one line (``fba train`` installs its own handlers, which checkpoint first).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

from fba.utils.atomic import DiskWriteError
from fba.errors import InputError
from fba.utils.lifetime import end_with_parent

from fba.commands import COMMANDS


def _command(name: str):
    return importlib.import_module(f"fba.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fba", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        sub.add_parser(name, help=_command(name).HELP, add_help=False)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the command is, so it unwinds (``finally`` blocks, DataLoader shutdown) as Ctrl-C does."""


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated


def _shutting_down(raise_it):
    """A handler for a process that is the command: it is shutting down from here on, so multiprocessing's helper
    threads (the resource sharer, queue feeders) drop the errors of workers stopped under them instead of printing
    tracebacks after the command's one line; then ``raise_it`` unwinds the command. Some places cannot take an
    exception: Python drops one raised in a ``__del__`` or a finaliser ("Exception ignored in ..."), and an
    extension module's C++ initialisation may clear it or abort on it (a SIGINT landing in Python code that
    ``torch._C._autograd_init()`` calls back during ``import torch`` ended ``fba eval`` in pybind11's
    ``terminate``, exit -6). A signal that lands there, or anywhere inside an import, is sent again a moment later
    instead, so it unwinds the command once the import is done (a second or two at most)."""
    def handler(signum: int, frame) -> None:
        util = sys.modules.get("multiprocessing.util")  # not imported yet: no helper thread runs either
        if util is not None:
            util._exiting = True
        if _drops_exceptions(frame):
            threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
            return
        raise_it(signum, frame)

    return handler


def _drops_exceptions(frame) -> bool:
    """Whether ``frame`` runs inside a finaliser or an import (extension modules' initialisation included)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.endswith("weakref.py"):
            return True
        if code.co_filename == "<frozen importlib._bootstrap>" and code.co_name in ("_find_and_load", "cb"):
            return True  # an import under way, or the weakref callback that drops a module's import lock
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _signals_unwind(program: bool):
    """SIGTERM raises :class:`Terminated` (SIGINT raises KeyboardInterrupt as always) where the command is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signal.SIGTERM: _raise_terminated}
    if program:
        handlers = {signal.SIGTERM: _shutting_down(_raise_terminated),
                    signal.SIGINT: _shutting_down(signal.default_int_handler)}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    program = argv is None  # the process is this command (not a caller's Python)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    with _signals_unwind(program):
        if program and "LOCAL_RANK" in os.environ:  # a rank of torchrun or deepspeed: it ends with its launcher
            end_with_parent(os.getppid())
        try:
            return _run(name, rest)
        except KeyboardInterrupt:
            _close_progress_bars()
            print(f"fba {name}: interrupted (SIGINT)", file=sys.stderr)
            return _signalled(130, program)
        except Terminated:
            _close_progress_bars()
            print(f"fba {name}: terminated (SIGTERM)", file=sys.stderr)
            return _signalled(143, program)


def _signalled(code: int, program: bool) -> int:
    """After the command has unwound: a process that is the command ends now, so helper threads of the stopped
    work (multiprocessing's resource sharer, a DataLoader's pin thread) cannot print a traceback on the way out."""
    if program:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(name: str, rest: list[str]) -> int:
    module = _command(name)
    parser = argparse.ArgumentParser(prog=f"fba {name}", description=module.HELP)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except DiskWriteError as err:
        _close_progress_bars()
        print(f"fba {name}: error: {err}", file=sys.stderr)
        return 1
    except InputError as err:
        _close_progress_bars()
        print(f"fba {name}: error: {one_line(err)}", file=sys.stderr)
        return 2


def _close_progress_bars() -> None:
    """End a progress bar the error interrupted, so the message starts on its own line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def one_line(err: BaseException) -> str:
    """The error's message on one line. An error raised in a DataLoader worker arrives wrapped in the worker's
    traceback; its last line holds the original message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
