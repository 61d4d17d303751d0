"""benchmarks/bench_tracking.py: the threshold rule and the MOT matching it scores with (always), and the whole
pipeline on a short sequence with the real boxmot and motmetrics (skipped where they are not installed: they live
in .venv-tracker, ``make setup-tracker``)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from _deploy_models import make_checkpoint
from benchmarks import bench_tracking
from benchmarks.common import device_slug


def test_the_threshold_minimises_the_two_error_rates():
    rng = np.random.default_rng(0)
    same, other = rng.normal(0.3, 0.1, 20000), rng.normal(0.5, 0.1, 20000)
    threshold, refused, accepted = bench_tracking.calibrated_threshold(same, other)
    assert abs(threshold - 0.4) < 0.03  # equal spreads: the midpoint, where the densities cross
    assert refused == pytest.approx(np.mean(same > threshold))
    assert accepted == pytest.approx(np.mean(other <= threshold))
    assert 0.28 < refused + accepted < 0.36  # 2 * Phi(-1) = 0.317 at the midpoint
    wide = rng.normal(0.5, 0.3, 20000)  # a flatter other-person density crosses the same-person one further out
    assert bench_tracking.calibrated_threshold(same, wide)[0] > threshold + 0.02


def test_iou_distance_is_one_minus_iou_and_no_match_below_half():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 40]], np.float32)
    hyp = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 25, 30, 40], [100, 100, 110, 110]], np.float32)
    got = bench_tracking.iou_distance(truth, hyp)
    want = np.full((2, 4), np.nan)
    want[0, 0], want[0, 1] = 0.0, 0.5  # half the box: IoU exactly 0.5 still matches
    want[1, 2] = 1 - 150 / 200
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert bench_tracking.iou_distance(truth, hyp[:0]).shape == (2, 0)


@pytest.mark.skipif(not (importlib.util.find_spec("boxmot") and importlib.util.find_spec("motmetrics")),
                    reason="boxmot and motmetrics are not installed (make setup-tracker: .venv-tracker)")
def test_tracking_smoke_runs_every_tracker_with_and_without_the_model(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "model.pt")
    assert bench_tracking.main(["--smoke", "--model", str(checkpoint), "--results-dir", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["tracking-smoke"]
    runs = {(r["tracker"], r["appearance"]) for r in entry["rows"]}
    assert {("BoT-SORT", "motion only"), ("BoT-SORT", "fba"), ("BoT-SORT", "untrained"),
            ("Deep OC-SORT", "motion only"), ("StrongSORT", "fba")} <= runs
    for row in entry["rows"]:
        assert 0 <= row["IDF1"] <= 100 and row["IDSW"] >= 0 and row["ms_per_frame"] > 0
    calibrated = {c["model"]: c for c in entry["config"]["calibration"]}
    assert calibrated["fba"]["same_pairs"] > 0 and 0 < calibrated["fba"]["threshold"] < 2
