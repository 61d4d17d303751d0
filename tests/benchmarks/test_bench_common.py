"""The benchmark loop every benchmark shares: warm-up calls untimed, then timed calls, synchronised on CUDA."""
from __future__ import annotations

import time

import pytest

from benchmarks import common


@pytest.fixture
def syncs(monkeypatch):
    seen = []
    monkeypatch.setattr(common, "synchronize", lambda device: seen.append(device))
    return seen


def test_measure_times_each_run_after_the_warmup(syncs):
    calls = []
    timing, result = common.measure(lambda: calls.append(1) or len(calls), repeat=3, warmup=2, device="cuda")
    assert len(calls) == 5 and result == 5 and len(timing.runs) == 3
    assert syncs == ["cuda"] * 6  # before and after each timed run, none in the warm-up
    assert timing.best <= timing.median


def test_time_loop_synchronises_once_around_the_timed_calls(syncs):
    calls = []
    seconds = common.time_loop(lambda: calls.append(time.sleep(0.002)), iters=4, warmup=1, device="cuda")
    assert len(calls) == 5 and syncs == ["cuda", "cuda"]
    assert seconds >= 0.002
