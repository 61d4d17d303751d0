"""Every command starts fast: ``fba <command> --help`` in a fresh interpreter imports none of the heavy parts, and
answers within a second and 100 MB; the commands' literal choices and defaults are the implementations' own."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from fba.commands import COMMANDS

HEAVY = ("torch", "transformers", "open_clip", "triton", "deepspeed", "nvidia.dali", "onnxruntime", "matplotlib",
         "torchvision", "safetensors")
PROBE = """
import json, sys
from fba.cli import main
try:
    main([sys.argv[1], "--help"])
except SystemExit:
    pass
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"rss_mb": hwm[0] / 1024, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)  # VmHWM is this process's own peak (ru_maxrss would start from the forking test process's size)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux /proc")
@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_light(command):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    seconds = time.perf_counter() - start  # the interpreter's start included, as a user waits for it
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"usage: fba {command}")
    probe = json.loads(lines[-1])
    assert probe["heavy"] == [], f"fba {command} --help imported {probe['heavy']}"
    assert seconds < 1.0 and probe["rss_mb"] < 100, (seconds, probe)


def test_literal_choices_are_the_implementations():
    """The command modules name choices and defaults literally (importing their owners would import torch)."""
    import argparse

    from fba.apps import captioner
    from fba.commands import caption, demo, embed, eval as eval_command, export, serve
    from fba.config import Loader
    from fba.data.synthetic.noise import REALISTIC_LEVEL
    from fba.apps.demo import DEMO_CONFIG
    from fba.deploy.export import FORMATS
    from fba.deploy.targets import DEFAULTS, TARGETS
    from fba.deploy.graph import CAPTION_INPUTS, FEATURES, INPUT_DTYPES, INPUT_NORMS
    from fba.retrieval.metrics import DISTANCES
    from fba.serve.model import FEATURES as SERVED_FEATURES, SERVE_BACKENDS
    from fba.serve.repository import Batching

    def options(module) -> dict[str, argparse.Action]:
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return {action.dest: action for action in parser._actions}

    captioning = options(caption)
    assert sorted(captioning["backend"].choices) == sorted(captioner.BACKENDS)
    assert captioning["model"].default == captioner.DEFAULT_MODEL
    assert captioning["max_new_tokens"].default == captioner.DEFAULT_MAX_NEW_TOKENS_FG
    assert captioning["max_new_tokens_bg"].default == captioner.DEFAULT_MAX_NEW_TOKENS_BG
    assert tuple(options(eval_command)["metric"].choices) == tuple(DISTANCES)
    assert tuple(options(embed)["loader"].choices) == typing.get_args(Loader)
    exporting = options(export)
    assert list(exporting["format"].choices) == list(FORMATS)
    assert tuple(exporting["feature"].choices) == tuple(FEATURES)
    assert list(exporting["input_dtype"].choices) == list(INPUT_DTYPES)
    assert tuple(exporting["input_norm"].choices) == tuple(INPUT_NORMS)
    assert tuple(exporting["caption_input"].choices) == CAPTION_INPUTS
    assert list(exporting["target"].choices) == list(TARGETS)
    assert all(exporting[key].default is None for key in DEFAULTS)  # None: not given, so a --target may set it
    serving = options(serve)
    assert tuple(serving["backend"].choices) == SERVE_BACKENDS
    assert tuple(serving["feature"].choices) == SERVED_FEATURES
    assert (serving["max_batch"].default, serving["max_queue_delay_us"].default, serving["max_queue_size"].default) == (
        Batching.max_batch, Batching.max_queue_delay_us, Batching.max_queue_size)
    assert demo.DEMO_CONFIG == DEMO_CONFIG and demo.REALISTIC_LEVEL == REALISTIC_LEVEL
