"""Shared test fixtures: a tiny Market-1501 tree; one tiny checkpoint, its crops and its exports for the whole
test run (export, embed, serve and the benchmarks' tests share them: each export is made once, ONNX takes seconds,
AOTI tens of seconds); and the Triton interpreter on machines without a GPU.

``triton.jit`` picks interpreter or compiler when a function is defined (Triton's own library included), so
``TRITON_INTERPRET=1`` is set here, when pytest loads this file, before any test module can import Triton
(``import torch`` does not). A value the caller set is kept.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:  # each worker (and each command it starts) its share of the cores: oversubscribed threads spin
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from _deploy_models import make_checkpoint, make_crop_folder
from image_trees import make_market_tree


SHARING_EXPORTS = ("deploy", "serve")  # the folders whose tests use the run's checkpoint and exports


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup`` (``make test``) each test file runs whole on one worker (its module
    fixtures are made once), and the files that share the run's exports on the same worker, which then makes
    each export once. Without pytest-xdist (the tracker's and the GPU suite's environments) nothing is marked."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    tests = Path(__file__).parent
    for item in items:
        inside = tests in item.path.parents
        shares = inside and item.path.relative_to(tests).parts[0] in SHARING_EXPORTS
        item.add_marker(pytest.mark.xdist_group("exports" if shares else str(item.path)))


@pytest.fixture
def market_root(tmp_path: Path) -> Path:
    """A Market-1501 tree: 3 training ids (9 images), 2 query ids, a gallery with one distractor and two junk."""
    return make_market_tree(tmp_path / "market")


@pytest.fixture
def cli_error(capsys):
    """Run ``fba ARGV`` and check it failed as bad input must: exit 2, one line ``fba CMD: error: ...`` on
    stderr matching ``pattern``; returns that line."""
    import re

    from fba.cli import main

    def run(argv: list[str], pattern: str) -> str:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        err = capsys.readouterr().err
        line = err.replace("\r", "\n").strip().splitlines()[-1]  # a progress bar may precede it
        assert code == 2, err
        assert err.endswith("\n") and err.count("error:") == 1 and line.startswith(f"fba {argv[0]}: error: "), err
        assert re.search(pattern, line), err
        return line

    return run


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("deploy") / "model.pt")


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """``exported(fmt, feature)`` -> the export folder, written once through ``fba export``; tests only read it."""
    from fba.cli import main

    made: dict[tuple[str, str], Path] = {}

    def get(fmt: str, feature: str) -> Path:
        if (fmt, feature) not in made:
            out = tmp_path_factory.mktemp(f"{fmt}-{feature}")
            assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out),
                         "--feature", feature]) == 0
            made[fmt, feature] = out
        return made[fmt, feature]

    return get


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Crops of the synthetic people, with captions.jsonl beside them."""
    return make_crop_folder(tmp_path_factory.mktemp("crops"))
