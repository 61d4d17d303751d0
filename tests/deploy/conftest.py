"""Session-wide tiny checkpoints and their exports (each export is made once: ONNX takes seconds, AOTI minutes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from _deploy_models import make_checkpoint
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
    """11 JPEG crops of another size than the model's (so the resize runs) in two sub-folders, and their captions."""
    import json

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    records = []
    for i in range(11):
        name = f"{'cam1' if i % 2 else 'cam2'}/{i:03d}.jpg"
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (70 + i, 35, 3), dtype=np.uint8)).save(root / name, quality=90)
        records.append({"image": name, "fg": f"a person in a shirt of colour {i} with a bag",
                        "bg": f"a street with {i} parked cars and a tree"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root
