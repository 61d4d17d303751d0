"""Smoke test of benchmarks/bench_captioner.py: the tiny random LLaVA on the CPU prints a table, writes JSON."""
from __future__ import annotations

import json

from benchmarks import bench_captioner
from benchmarks.common import device_slug


def test_bench_captioner_smoke_writes_table_and_json(tmp_path, capsys):
    assert bench_captioner.main(["--smoke", "--results-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "images_per_s" in printed and "hours_per_10k_images" in printed and "[captioner-smoke]" in printed
    entry = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["captioner-smoke"]
    assert entry["commit"] and entry["config"]["shape"]["name"] == "tiny"
    assert entry["config"]["max_new_tokens_fg_bg"] == [96, 80]
    rows = entry["rows"]
    assert [r["batch_size"] for r in rows] == [2, 4]
    for row in rows:
        assert row["s_per_batch"] > 0 and row["images_per_s"] > 0 and row["static_cache"] is False
