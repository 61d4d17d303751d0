"""Smoke test of benchmarks/bench_serve.py: a real server, the in-process rows and fba embed, in one small run."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_serve
from benchmarks.common import device_slug
from fba.serve.server import check_triton

pytestmark = pytest.mark.slow


def test_bench_serve_smoke_writes_table_and_json(tmp_path, capsys):
    problem = check_triton()
    if problem:
        pytest.skip(f"Triton cannot start here: {problem}")
    assert bench_serve.main(["--smoke", "--results-dir", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["serve-smoke"]
    rows = {(r["variant"], r["concurrency"]): r for r in entry["rows"]}
    assert set(rows) == {("in-process per request", 1), ("in-process batched", 32), ("grpc", 1), ("grpc", 4),
                         ("fba embed per call", 1)}
    for row in rows.values():
        assert row["failed"] == 0 and row["img_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert rows["grpc", 4]["server_compute_ms"] > 0 and rows["grpc", 1]["requests_per_call"] >= 1
    assert "vs_in_process" in rows["grpc", 1] and "load average" in capsys.readouterr().out
