"""benchmarks/gpu_suite.py: the GPU plan names only things that exist, and its CPU rehearsal runs every step."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import bench_embed, bench_train_step, gpu_suite
from benchmarks.common import REPO_ROOT, device_slug


def test_gpu_plan_names_existing_variants_tests_and_modules(tmp_path):
    """What the rehearsal cannot run on the CPU (Inductor builds, CUDA) is checked by name here."""
    assert set(gpu_suite.TRAIN_VARIANTS) <= set(bench_train_step.VARIANTS)
    assert set(gpu_suite.EMBED_VARIANTS) <= set(bench_embed.VARIANTS)
    assert set(gpu_suite.REHEARSE_EMBED_VARIANTS) <= set(gpu_suite.EMBED_VARIANTS)
    assert set(gpu_suite.REHEARSE_TRAIN_VARIANTS) <= set(gpu_suite.TRAIN_VARIANTS)
    assert all((REPO_ROOT / path).exists() for path in gpu_suite.GPU_TESTS)
    steps = gpu_suite.plan(rehearse=False, out=tmp_path)
    assert [s.name for s in steps] == ["setup", "gpu-tests", "gpu-tests-cuda", "cross_attention", "train_step",
                                       "embed", "input", "decode"]
    assert sum(s.timeout_s for s in steps) >= gpu_suite.DEADLINE_S  # the deadline, not the sum, bounds the run
    for step in steps:
        if step.argv[1] == "-m" and step.argv[2].startswith("benchmarks."):
            assert (REPO_ROOT / (step.argv[2].replace(".", "/") + ".py")).exists(), step.name
        assert "--smoke" not in step.argv and "--collect-only" not in step.argv


def test_a_step_past_its_timeout_is_stopped_and_the_suite_goes_on(tmp_path, monkeypatch):
    slow = gpu_suite.Step("slow", [sys.executable, "-c", "import time; time.sleep(60)"], 1)
    fast = gpu_suite.Step("fast", [sys.executable, "-c", "print('hi')"], 30, skip=None)
    late = gpu_suite.Step("late", [sys.executable, "-c", "print('never')"], 30)
    monkeypatch.setattr(gpu_suite, "plan", lambda rehearse, out: [slow, fast, late])
    clock = iter([0.0, 0.0, 0.5, 2.0, 2.0, 2.1, 200.0, 200.0])
    monkeypatch.setattr(gpu_suite.time, "monotonic", lambda: next(clock, 200.0))
    rows = gpu_suite.run_suite(rehearse=True, out=tmp_path, deadline_s=100)
    assert [r["status"][:7] for r in rows] == ["timeout", "ok", "skipped"]
    saved = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["gpu_suite-rehearse"]["rows"]
    assert [r["step"] for r in saved] == ["slow", "fast", "late"]


@pytest.mark.slow
def test_rehearsal_runs_the_whole_plan_on_cpu(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "--rehearse", "--results-dir",
                             str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())
    rows = data["gpu_suite-rehearse"]["rows"]
    assert [r["step"] for r in rows] == [s.name for s in gpu_suite.plan(True, tmp_path)]
    for row in rows:
        assert row["status"] == "ok" or row["status"].startswith("skipped: DALI"), row
        if row["result_key"] and row["status"] == "ok":
            assert data[row["result_key"]]["rows"], row["step"]


# What the bare GPU machine's python3 has (benchmarks/gpu_suite_wheels.txt's header says the same)
GPU_MACHINE_HAS = {"torch", "triton", "numpy", "psutil", "py-cpuinfo", "msgpack", "einops", "ninja",
                   "typing-extensions", "filelock", "jinja2", "networkx", "sympy", "fsspec", "setuptools"}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def test_the_carried_wheels_complete_deepspeed_on_the_gpu_machine():
    """DeepSpeed's dependencies (installed metadata, followed through) are on the GPU machine or in the list, so
    `import deepspeed` works there; the rehearsal's DeepSpeed set is all listed."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    listed = {_normal(line.split("==")[0]) for line in (REPO_ROOT / "benchmarks" / "gpu_suite_wheels.txt")
              .read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {_normal(n) for n in gpu_suite.DEEPSPEED_WHEELS} <= listed
    todo, seen = ["deepspeed"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in GPU_MACHINE_HAS:  # there with its own dependencies
            continue
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": "", "platform_system": "Linux"}):
                todo.append(_normal(requirement.name))
    assert seen - GPU_MACHINE_HAS - listed == set()
