"""Smoke test of benchmarks/bench_train_step.py: the tiny model on the CPU prints its tables and writes its JSON."""
from __future__ import annotations

import json

import pytest

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
