"""An AOTInductor package is native code: ``fba embed --backend aoti`` loads one only with --trust-native-code
(docs/reliability.md, "Loading: no file runs code")."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest


CONSTRUCTOR = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("ran", f); fclose(f); }
}
"""


def _planted_package(checkpoint: Path, tmp_path: Path, marker: Path) -> Path:
    """A .pt2 laid out as AOTInductor writes one, with a tiny model's fba metadata and a wrapper library whose
    constructor writes ``marker`` when the library is loaded."""
    import torch

    from fba.deploy.export import export_metadata
    from fba.model.model_file import load_model

    model, cfg = load_model(checkpoint, "cpu", torch.float32)
    source = tmp_path / "planted.c"
    source.write_text(CONSTRUCTOR)
    library = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o", str(library)], check=True)
    package = tmp_path / "model.pt2"
    with zipfile.ZipFile(package, "w") as archive:
        root = "model/data/aotinductor/model"
        archive.writestr(f"{root}/planted.wrapper_metadata.json",
                         json.dumps({**export_metadata(model, "image", "uint8", None, cfg.model), "AOTI_DEVICE_KEY": "cpu"}))
        archive.write(library, f"{root}/planted.wrapper.so")
    return package


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the planted library")
def test_a_planted_constructor_does_not_run_without_the_flag(checkpoint, image_folder, tmp_path, cli_error,
                                                             monkeypatch):
    marker = tmp_path / "marker"
    temporary = tmp_path / "tmp"
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale = temporary / f"fba-aoti-{ended.pid}-x" / "aotinductor_x"  # what a killed load leaves
    stale.mkdir(parents=True)
    (stale / "model.so").write_bytes(b"")
    package = _planted_package(checkpoint, tmp_path, marker)
    images = image_folder
    cli_error(["embed", "--backend", "aoti", "--model", package, "--images", images, "--image-only", "--out",
               tmp_path / "f.npz", "--device", "cpu"],
              r"model.pt2: an AOTInductor package is native code .* --trust-native-code")
    assert not marker.exists()
    cli_error(["embed", "--backend", "aoti", "--trust-native-code", "--model", package, "--images", images,
               "--image-only", "--out", tmp_path / "f.npz", "--device", "cpu"], r"cannot load the AOTInductor package")
    assert marker.read_text() == "ran"  # with the flag torch loads the library: that load is what the flag guards
    assert list(temporary.iterdir()) == []  # the stale extraction swept, the failed load's own removed
