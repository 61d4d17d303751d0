"""Session-wide tiny checkpoints and their exports (each export is made once: ONNX takes seconds, AOTI minutes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from _deploy_models import make_checkpoint, make_crop_folder
from fba.cli import main


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("deploy") / "model.pt")


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """``exported(fmt, feature)`` -> the export folder, written once through ``fba export``."""
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
    return make_crop_folder(tmp_path_factory.mktemp("crops"))
