"""Smoke test of benchmarks/int8_accuracy.py: a tiny model on a tiny data set, every backend scored."""
from __future__ import annotations

import importlib.util
import json

from _tiny_run import make_tiny_dataset, untrained_model_file
from benchmarks import int8_accuracy
from benchmarks.common import device_slug


def test_int8_accuracy_smoke_scores_fp32_and_int8(tmp_path):
    root = make_tiny_dataset(tmp_path / "data", train_ids=8, test_ids=6)
    checkpoint = untrained_model_file(root, tmp_path, 8)
    assert int8_accuracy.main(["--smoke", "--model", str(checkpoint), "--results-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["int8-accuracy-smoke"]["rows"]
    backends = {(r["backend"], r["precision"]) for r in rows}
    assert {("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= backends
    runtimes = 2 if importlib.util.find_spec("openvino") else 1
    assert len(backends) == 1 + runtimes * (3 if importlib.util.find_spec("nncf") else 2)
    for row in rows:
        assert row["status"] == "ok" and 0 <= row["mAP"] <= 100 and row["img_per_s"] > 0
        assert row["cos_min"] > 0.9 if row["precision"].startswith("int8") else row["cos_min"] > 0.9999
