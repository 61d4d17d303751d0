"""Loading never runs code: a crafted pickle in model.pt, an RNG file or a DeepSpeed checkpoint file is refused by
name before it can act; the files this project writes (and wrote before) still load."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fba.config import load_config
from fba.train import checkpoint as ckpt
from fba.model import model_file
from fba.utils.safe_load import UnsafeFileError, read_torchscript_tensors, safe_torch_load


class _WritesMarker:
    """What an attacker puts in a model file: unpickling it calls ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(path: Path, marker: Path, payload: dict | None = None) -> Path:
    torch.save({**(payload or {}), "format": model_file.MODEL_FORMAT, "evil": _WritesMarker(marker)}, path)
    return path


def test_crafted_model_file_is_refused_by_name_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "model.pt", marker)
    with pytest.raises(UnsafeFileError, match=r"model file .*model\.pt holds Python objects .*posix\.system"):
        model_file.load_model(path)
    assert not marker.exists()


def test_crafted_model_file_via_cli_is_one_line_exit_2(tmp_path, capsys):
    from fba.cli import main

    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "model.pt", marker)
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 16)).save(tmp_path / "images" / "a.jpg")
    code = main(["embed", "--model", str(path), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "f.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fba embed: error: ") and str(path) in err and err.count("\n") == 1
    assert not marker.exists()


def test_crafted_rng_file_and_deepspeed_file_are_refused(tmp_path):
    from test_checkpoint import _engine, _step

    engine, _ = _engine()
    _step(engine)
    ckpt.save_checkpoint(engine, tmp_path, "epoch_0001", {"epoch": 0, "step": 1})
    folder = tmp_path / "epoch_0001"
    assert safe_torch_load(folder / "rng_rank0.pt")["numpy"]["keys"].dtype == torch.int64  # tensors only
    marker = tmp_path / "pwned"

    rng_file = folder / "rng_rank0.pt"
    good_rng = rng_file.read_bytes()
    torch.save({"python": _WritesMarker(marker)}, rng_file)
    other, _ = _engine(seed=1)
    with pytest.raises(UnsafeFileError, match="RNG state .*rng_rank0.pt"):
        ckpt.load_checkpoint(other, tmp_path)
    rng_file.write_bytes(good_rng)

    model_states = next(folder.glob("*model_states.pt"))
    state = torch.load(model_states, weights_only=False)
    state["client"] = _WritesMarker(marker)
    torch.save(state, model_states)
    other, _ = _engine(seed=1)
    with pytest.raises(UnsafeFileError, match=f"DeepSpeed checkpoint file .*{model_states.name}"):
        ckpt.load_checkpoint(other, tmp_path)
    assert not marker.exists()


def test_rng_file_of_earlier_versions_still_loads(tmp_path):
    """Before the states were tensors the file held ``np.random.get_state()`` (an array): it is read as data."""
    np.random.seed(7)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, tmp_path / "rng_rank0.pt")
    expected = np.random.rand()
    np.random.seed(0)
    ckpt.set_rng_state(safe_torch_load(tmp_path / "rng_rank0.pt", numpy_arrays=True))
    assert np.random.rand() == expected


def test_model_file_of_earlier_versions_loads_with_weights_only(tmp_path):
    """model.pt has always been tensors + plain data: one written with plain torch.save loads unchanged."""
    from fba.model import build_model

    cfg = load_config(None, ["model.arch=tiny", "model.stride=16", "model.cross_layers=1", "data.height=64",
                             "data.width=32"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg.model, 5, (64, 32))
    torch.save({"format": model_file.MODEL_FORMAT, "state_dict": model.state_dict(), "config": cfg.to_dict(),
                "num_classes": 5, "image_size": [64, 32]}, tmp_path / "old.pt")
    loaded, _ = model_file.load_model(tmp_path / "old.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_torchscript_archive_is_read_without_running_its_code(tmp_path, monkeypatch):
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Linear(3, 2).half()
            self.register_buffer("positional_embedding", torch.randn(4))
            self.note = torch.ones(2)  # a plain tensor attribute: not in the state dict

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.note.sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Holder()), str(tmp_path / "clip.pt"))
        expected = torch.jit.load(str(tmp_path / "clip.pt")).state_dict()

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", refuse)
    got = read_torchscript_tensors(tmp_path / "clip.pt")
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype for k in expected)
    with pytest.raises(UnsafeFileError, match="TorchScript archive"):
        safe_torch_load(tmp_path / "clip.pt", "model file")
