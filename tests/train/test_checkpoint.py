"""Checkpoints: round trip of weights, optimiser, schedule, client state and RNG; atomic against a killed save;
the plain model.pt export that loads without DeepSpeed."""
from __future__ import annotations

import os
import random
import warnings

import numpy as np
import pytest
import torch

from fba.config import Config, SolverConfig, load_config
from fba.train import checkpoint as ckpt
from fba.model import model_file
from fba.train.schedule import EpochCosineSchedule
from fba.train.engine_config import EnginePlan, deepspeed_config
from fba.train.trainer import setup_distributed


def _engine(seed: int = 0):
    import deepspeed

    setup_distributed()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    scheduler = EpochCosineSchedule(optimizer, SolverConfig(base_lr=1e-2, epochs=3, warmup_epochs=1))
    cfg = Config()
    cfg.data.batch_size = 4
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, EnginePlan("lowp_weights", "bf16", 2, 1)))
    scheduler.begin_epoch(0, 5)
    return engine, scheduler


def _step(engine) -> None:
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    engine.backward(engine(x).float().pow(2).mean())
    engine.step()


def _weights(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.module.parameters()]


def test_round_trip_restores_weights_optimiser_schedule_and_rng(tmp_path):
    engine, scheduler = _engine()
    for _ in range(2):
        _step(engine)
    saved = _weights(engine)
    saved_lr = scheduler.get_last_lr()
    ckpt.save_checkpoint(engine, tmp_path, "epoch_0001", {"epoch": 0, "step": 2})
    expected_draws = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(123)
    _step(engine)
    continued = _weights(engine)

    other, other_scheduler = _engine(seed=1)
    state = ckpt.load_checkpoint(other, tmp_path)
    assert state["epoch"] == 0 and state["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(_weights(other), saved))
    assert other_scheduler.get_last_lr() == saved_lr
    draws = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]
    torch.manual_seed(123)
    _step(other)  # the same step from the restored Adam moments gives the same weights
    assert all(torch.equal(a, b) for a, b in zip(_weights(other), continued))
    assert not all(torch.equal(a, b) for a, b in zip(continued, saved))


def test_a_killed_save_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch):
    engine, _ = _engine()
    _step(engine)
    ckpt.save_checkpoint(engine, tmp_path, "epoch_0001", {"epoch": 0, "step": 1})
    good = _weights(engine)
    _step(engine)
    real_save = engine.save_checkpoint

    def killed(save_dir, tag, **kwargs):
        (tmp_path / tag).mkdir(parents=True, exist_ok=True)
        (tmp_path / tag / "mp_rank_00_model_states.pt").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(engine, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(engine, tmp_path, "epoch_0002", {"epoch": 1, "step": 2})
    assert ckpt.latest_tag(tmp_path) == "epoch_0001"
    assert not (tmp_path / "epoch_0002").exists() and (tmp_path / ".tmp-epoch_0002").exists()
    fresh, _ = _engine(seed=3)
    assert ckpt.load_checkpoint(fresh, tmp_path)["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(_weights(fresh), good))

    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    ckpt.save_checkpoint(engine, tmp_path, "epoch_0002", {"epoch": 1, "step": 2})
    assert ckpt.latest_tag(tmp_path) == "epoch_0002"
    assert not (tmp_path / ".tmp-epoch_0002").exists()


def test_latest_pointer_is_replaced_atomically(tmp_path, monkeypatch):
    pointer = tmp_path / ckpt.LATEST
    ckpt.atomic_write_bytes(pointer, b"epoch_0001\n")

    def crash(*args):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.atomic_write_bytes(pointer, b"epoch_0002\n")
    assert pointer.read_text() == "epoch_0001\n"
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.LATEST]


def test_old_checkpoints_are_pruned_and_a_dangling_pointer_is_an_error(tmp_path):
    engine, _ = _engine()
    for epoch in range(1, 5):
        _step(engine)
        ckpt.save_checkpoint(engine, tmp_path, f"epoch_{epoch:04d}", {"epoch": epoch - 1}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("epoch_")) == ["epoch_0003", "epoch_0004"]
    assert ckpt.latest_tag(tmp_path / "missing") is None
    (tmp_path / ckpt.LATEST).write_text("epoch_0009\n")
    with pytest.raises(FileNotFoundError, match="epoch_0009"):
        ckpt.latest_tag(tmp_path)


def test_model_export_loads_without_deepspeed_and_extracts_the_same(tmp_path):
    from fba.model import build_model
    from fba.model.text import tokenize

    cfg = load_config(None, ["model.arch=tiny", "model.stride=16", "model.cross_layers=1", "data.height=64",
                             "data.width=32"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg.model, 5, (64, 32)).eval()
    images = torch.randn(3, 3, 64, 32)
    fg = tokenize(["a red shirt", "blue jeans", "a green coat"])
    bg = tokenize(["a car", "a tree", "a wall"])
    path = model_file.export_model(model, tmp_path / "model.pt", cfg, 5, (64, 32))
    loaded, loaded_cfg = model_file.load_model(path)
    assert loaded_cfg.model.arch == "tiny" and loaded_cfg.model.pretrained is None
    with torch.no_grad():
        assert torch.equal(model.extract(images, (fg, bg)), loaded.extract(images, (fg, bg)))
    half, _ = model_file.load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        reference = model.extract(images, (fg, bg))
        assert torch.allclose(half.extract(images.bfloat16(), (fg, bg)).float(), reference, atol=3e-2)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt"):
        model_file.load_model(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an FBA model export"):
        model_file.load_model(tmp_path / "other.pt")
