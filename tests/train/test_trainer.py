"""The DeepSpeed trainer end to end on a tiny captioned data set (tiny CLIP, 64x32 images, CPU, bf16, one rank;
several ranks: test_world_size.py, engine modes: test_engine_modes.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _tiny_run import make_tiny_dataset, tiny_config
from fba.config import ConfigError
from fba.model.model_file import load_model
from fba.train.checkpoint import CheckpointMismatchError, latest_tag
from fba.train.run_folder import RunFolderInUseError
from fba.train.trainer import Trainer, train

LOSS_KEYS = ("loss/total", "loss/id", "loss/tri", "loss/id_c", "loss/tri_c", "loss/div_tri", "loss/div_con", "loss/div")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def _records(path: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if "loss/total" in r], [r for r in records if "eval/mAP" in r]


def test_one_epoch_lowers_the_loss_and_writes_everything(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, tmp_path / "run", "solver.epochs=1")
    result = train(cfg)
    steps, evals = _records(result.metrics_path)
    assert [r["step"] for r in steps] == list(range(1, result.steps + 1)) and result.steps == 4
    for record in steps:
        assert set(LOSS_KEYS) <= set(record) and record["epoch"] == 0
        assert record["lr"] > 0 and record["images_per_s"] > 0
    assert steps[-1]["loss/total"] < 0.8 * steps[0]["loss/total"]
    assert len(evals) == 1 and set(evals[0]) == {"step", "epoch", "eval/mAP", "eval/R1", "eval/R5", "eval/R10", "eval/mINP"}
    assert result.final_metrics == {k: v for k, v in evals[0].items() if k.startswith("eval/")}
    assert result.best_model_path is not None and result.best_model_path.is_file()
    assert any((result.output_dir / "tensorboard").iterdir())
    assert latest_tag(result.output_dir / "checkpoints") == "epoch_0001"
    model, saved_cfg = load_model(result.model_path)
    assert saved_cfg.to_dict()["data"] == cfg.to_dict()["data"] and not model.training

    from fba.apps.viz import save_loss_curves

    assert save_loss_curves(tmp_path / "curves.png", result.metrics_path).stat().st_size > 0

    (result.output_dir / "checkpoints" / "epoch_0007").mkdir()  # left by an earlier, longer run
    with pytest.raises(RunFolderInUseError, match="holds another run's checkpoints.*--resume.*--overwrite"):
        train(cfg)
    again = train(cfg, overwrite=True)
    assert len(_records(again.metrics_path)[0]) == 4
    assert sorted(p.name for p in (again.output_dir / "checkpoints").glob("epoch_*")) == ["epoch_0001"]


def test_resume_without_latest_pointer_uses_the_newest_complete_checkpoint(tiny_root, tmp_path, capsys):
    cfg = tiny_config(tiny_root, tmp_path / "run", "solver.epochs=2", "solver.iters_per_epoch=1")
    first = train(cfg, stop_after_epochs=1)
    checkpoints = first.output_dir / "checkpoints"
    (checkpoints / "latest").unlink()
    (checkpoints / ".tmp-epoch_0002").mkdir()  # a save killed before its rename
    capsys.readouterr()
    resumed = train(cfg, resume=True)
    out = capsys.readouterr().out
    assert "latest is missing: resuming from the newest complete checkpoint" in out and "epoch_0001" in out
    assert resumed.epochs_done == 2 and resumed.steps == 2

    config_before = (first.output_dir / "config.yaml").read_text()
    other = make_tiny_dataset(tmp_path / "other", train_ids=4, test_ids=2)  # 4 ids: another classifier size
    with pytest.raises(CheckpointMismatchError, match=r"epoch_0002 does not fit this run's model \(size mismatch"):
        train(tiny_config(other, first.output_dir, "solver.epochs=2", "solver.iters_per_epoch=1"), resume=True)
    assert (first.output_dir / "config.yaml").read_text() == config_before
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir() or p.name == "latest") == [
        "epoch_0001", "epoch_0002", "latest"]


@pytest.mark.slow
def test_resume_continues_exactly_like_an_unbroken_run(tiny_root, tmp_path):
    unbroken = train(tiny_config(tiny_root, tmp_path / "unbroken"))
    interrupted = tiny_config(tiny_root, tmp_path / "resumed")
    first = train(interrupted, stop_after_epochs=1)
    assert first.epochs_done == 1 and first.steps == 4
    resumed = train(interrupted, resume=True)
    assert resumed.epochs_done == 2
    expected, expected_eval = _records(unbroken.metrics_path)
    got, got_eval = _records(resumed.metrics_path)
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, 9))
    for a, b in zip(expected, got):
        assert {k: a[k] for k in (*LOSS_KEYS, "lr", "epoch")} == {k: b[k] for k in (*LOSS_KEYS, "lr", "epoch")}
    assert [{k: v for k, v in r.items()} for r in got_eval] == expected_eval
    a, _ = load_model(unbroken.model_path)
    b, _ = load_model(resumed.model_path)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_frozen_text_tower_never_moves_and_cached_features_skip_it(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, tmp_path / "run", "solver.epochs=1", f"model.text_cache={tmp_path / 'cache'}")
    trainer = Trainer(cfg)
    text_encoder = trainer.module.text_encoder
    before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    # ZeRO hands the optimiser one flat partition, so count elements rather than compare parameter objects
    optimised = sum(p.numel() for group in trainer.scheduler.optimizer.param_groups for p in group["params"])
    trainable = sum(p.numel() for p in trainer.module.trainable_parameters())
    tower = sum(p.numel() for p in text_encoder.parameters())
    assert trainable <= optimised < trainable + tower

    def no_tower(*args, **kwargs):
        raise AssertionError("the text tower ran inside a training step despite model.text_cache")

    text_encoder.forward = no_tower
    trainer.run()
    assert any((tmp_path / "cache").rglob("*.safetensors"))
    for key, value in text_encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_diverging_loss_stops_the_run_with_a_clear_error(tiny_root, tmp_path):
    with pytest.raises(FloatingPointError, match="training loss is nan at step 2"):
        train(tiny_config(tiny_root, tmp_path / "run", "solver.base_lr=1e30", "solver.epochs=1",
                          "train.precision=fp32"))


def test_corrupt_training_image_is_named(tmp_path):
    root = make_tiny_dataset(tmp_path / "data", train_ids=4, test_ids=2)
    bad = sorted((root / "bounding_box_train").iterdir())[5]
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(Exception, match=bad.name):
        train(tiny_config(root, tmp_path / "run", "solver.epochs=1"))


def test_test_only_dataset_and_cpu_fp16_are_refused(tiny_root, tmp_path):
    with pytest.raises(ConfigError, match="test-only.*cuhk03np"):
        train(tiny_config(tiny_root, tmp_path / "a", "data.test_only=true"))
    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        train(tiny_config(tiny_root, tmp_path / "b", "train.precision=fp16"))


def test_precision_and_deepspeed_settings_follow_the_config(tiny_root, tmp_path):
    from fba.train.engine_config import deepspeed_config, plan_engine
    from fba.train.trainer import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="train.precision: must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        tiny_config(tiny_root, tmp_path, "train.precision=fp8")
    cfg = tiny_config(tiny_root, tmp_path, "solver.grad_clip=1.5", "train.zero_stage=3", "solver.grad_accum_steps=2",
                      "train.engine_mode=lowp_weights", "data.batch_size=16")
    plan = plan_engine(cfg, "fp16", world_size=2)
    ds = deepspeed_config(cfg, plan)
    assert ds["gradient_clipping"] == 1.5 and ds["zero_optimization"]["stage"] == 3
    # data.batch_size=16 is the global batch: 2 ranks x 2 micro-steps x 1 identity of 4 images
    assert ds["gradient_accumulation_steps"] == 2 and ds["train_batch_size"] == 16
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0 and not ds["bf16"]["enabled"]
    assert not ds["torch_autocast"]["enabled"] and plan.weight_dtype == torch.float16


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_before_deepspeed_starts(tiny_root, tmp_path,
                                                                                       monkeypatch):
    import fba.train.trainer as trainer

    def no_deepspeed():
        raise AssertionError("DeepSpeed started before the batch split was checked")

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(trainer, "setup_distributed", no_deepspeed)
    with pytest.raises(ConfigError, match=r"data.batch_size=8 is 2 identities x 4 images.*world size 3"):
        train(tiny_config(tiny_root, tmp_path / "run"))


def test_cli_refuses_occluded_reid_config(cli_error):
    cli_error(["train", "-c", "configs/occluded_reid.yaml"], "test-only")
