"""The ``fba`` commands' faces: one module per command, each with ``HELP``, ``add_arguments(parser)`` and
``run(args)``. A command module imports nothing heavy at the top (no torch, models, data or runtimes), so
``fba <command> --help`` answers at once; ``run`` imports the code that does the work when the work starts.
"""
from __future__ import annotations

COMMANDS = ("synth", "caption", "train", "eval", "embed", "export", "serve", "demo", "ablate")
