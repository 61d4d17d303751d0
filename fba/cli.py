"""The ``fba`` command: one sub-command per job, each living in the module that does the work.

Each target module exposes ``add_arguments(parser)`` and ``run(args) -> int | None``. Modules are imported only
when their command runs, so ``fba synth`` never pays for importing DeepSpeed or DALI. Bad input
(``fba.errors.InputError``) is printed on one line and exits 2; anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from fba.atomic import DiskWriteError
from fba.errors import InputError

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("fba.data.synthetic", "generate the synthetic person data set (Market-1501 layout + captions)"),
    "caption": ("fba.captioner", "caption a data set with a vision-language model (or the template backend)"),
    "train": ("fba.engine.trainer", "train FBA with DeepSpeed (ZeRO, bf16)"),
    "eval": ("fba.engine.evaluator", "evaluate a checkpoint on a data set, or a saved features file"),
    "embed": ("fba.engine.embed_cli", "embed a folder or list of images into a features file"),
    "export": ("fba.deploy.export", "export a model.pt to ONNX or an AOTInductor package for serving"),
    "demo": ("fba.demo", "the main job: synthetic data, train the tiny FBA, evaluate, draw the pictures"),
    "ablate": ("fba.ablate", "train the Table 3 ablation rows on the synthetic occluded set"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fba", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"fba {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except DiskWriteError as err:
        _close_progress_bars()
        print(f"fba {name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"fba {name}: interrupted", file=sys.stderr)
        return 130
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
