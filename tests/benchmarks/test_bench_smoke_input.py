"""Smoke test of benchmarks/bench_input.py: tiny sizes, table printed, JSON merged into the device's file."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_input
from benchmarks.common import device_slug, write_results


def test_bench_input_smoke_writes_table_and_json(tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    write_results("other_benchmark", [{"x": 1}], directory=tmp_path)
    work = tmp_path / "images"
    assert bench_input.main(["--smoke", "--results-dir", str(tmp_path), "--work-dir", str(work)]) == 0
    printed = capsys.readouterr().out
    assert "images_per_s" in printed and "dali-cpu" in printed and "market-sized" in printed
    data = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())
    assert data["other_benchmark"]["rows"] == [{"x": 1}]
    entry = data["input-smoke"]
    assert entry["commit"] and entry["config"]["height"] == bench_input.SMOKE.height
    rows = entry["rows"]
    assert {(row["images"], row["loader"]) for row in rows} >= {
        ("synthetic", "torch"), ("synthetic", "dali-cpu"), ("market-sized", "torch"), ("market-sized", "dali-cpu")}
    assert all(row["images_per_s"] > 0 for row in rows)
    assert all(row["vs_torch"] == 1 for row in rows if row["loader"] == "torch")
    assert len(list((work / "market_sized").glob("*.jpg"))) == bench_input.SMOKE.market_images
