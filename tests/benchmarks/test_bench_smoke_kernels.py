"""Smoke test of benchmarks/bench_cross_attention.py: tiny CPU shapes, table printed, JSON written.

It runs in a subprocess: the Triton interpreter must be chosen before ``import triton``, which other test
modules of this process may already have done.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.common import REPO_ROOT, device_slug


def test_bench_cross_attention_smoke_writes_table_and_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_cross_attention", "--smoke", "--repeat", "1",
         "--results-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "speedup_vs_reference" in result.stdout and "triton" in result.stdout
    entry = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["cross_attention-smoke"]
    assert entry["config"]["shape"]["nq"] == 13 and entry["commit"]
    cases = {(row["op"], row["mode"], row["impl"]) for row in entry["rows"]}
    assert ("img2txt", "fwd+bwd", "triton") in cases and ("all4", "fwd", "reference") in cases
    assert all(row["ms"] > 0 and row["GB_s"] > 0 for row in entry["rows"])
