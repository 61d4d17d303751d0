"""Smoke test of benchmarks/bench_train_step.py: the tiny model on the CPU prints its tables and writes its JSON."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_train_step
from benchmarks.common import device_slug


@pytest.mark.slow  # ~15 s alone on 2 cores, DeepSpeed's import and engine included
def test_bench_train_step_smoke_writes_table_and_json(tmp_path, capsys):
    argv = ["--smoke", "--device", "cpu", "--steps", "2", "--results-dir", str(tmp_path),
            "--variants", "eager-reference", "+fused-kernels", "+cached-text", "+deepspeed", "+deepspeed-zero2",
            "+deepspeed-lowp"]
    assert bench_train_step.main(argv) == 0
    printed = capsys.readouterr().out
    assert "img_per_s" in printed and "backbone_bwd_ms" in printed and "eager-reference" in printed
    entry = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["train_step-smoke"]
    assert entry["commit"] and entry["config"]["shape"]["arch"] == "tiny" and entry["config"]["shape"]["batch"] == 8
    rows = {row["variant"]: row for row in entry["rows"]}
    assert rows["+fused-kernels"]["status"].startswith("skipped")
    for name in ("eager-reference", "+cached-text", "+deepspeed", "+deepspeed-zero2", "+deepspeed-lowp"):
        row = rows[name]
        assert row["status"] == "ok" and row["kernel"] == "reference"
        assert row["step_ms"] > 0 and row["img_per_s"] > 0 and 0 < row["mfu_measured"]
        assert row["backbone_fwd_ms"] > 0 and row["backbone_bwd_ms"] > 0 and row["optimizer_ms"] > 0
    assert rows["eager-reference"]["text_fwd_ms"] > 0  # token ids go through the frozen tower
    assert rows["+cached-text"]["text_fwd_ms"] == 0  # precomputed features skip it
    assert rows["+cached-text"]["gflop_per_img"] < rows["eager-reference"]["gflop_per_img"]
    assert [rows[n]["engine_mode"] for n in ("+deepspeed", "+deepspeed-zero2", "+deepspeed-lowp")] == [
        "autocast", "autocast", "lowp_weights"]


@pytest.mark.slow  # DeepSpeed's engine on the CPU
def test_deepspeed_row_runs_the_trainers_own_step(tmp_path, monkeypatch):
    """The "fba train" row is measured on ``fba.train.trainer.TrainStep`` over ``build_engine``'s engine, with
    the variant's engine mode and ZeRO stage reaching the trainer's config."""
    from fba.train import trainer

    calls, configs = [], []
    real_call, real_build = trainer.TrainStep.__call__, trainer.build_engine

    def spy_call(self, batch, mark=None):
        calls.append(batch["images"].shape[0])
        return real_call(self, batch, mark)

    def spy_build(cfg, model, plan):
        configs.append(cfg)
        return real_build(cfg, model, plan)

    monkeypatch.setattr(trainer.TrainStep, "__call__", spy_call)
    monkeypatch.setattr(bench_train_step, "build_engine", spy_build)
    variant = bench_train_step.Variant("+deepspeed-zero1", cached_text=True, engine_mode="autocast", zero_stage="1")
    shape = bench_train_step.Shape(**{**bench_train_step.asdict(bench_train_step.SMOKE), "steps": 2})
    row = bench_train_step.run_variant(variant, shape, torch.device("cpu"), {"spec": None, "measured": 1.0})
    assert row["status"] == "ok" and row["zero_stage"] == "1"
    assert calls == [shape.batch] * (shape.warmup + shape.steps)  # (+1 host-sync count on CUDA)
    assert [c.train.zero_stage for c in configs] == ["1"] and configs[0].data.batch_size == shape.batch
