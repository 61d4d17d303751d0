"""The wheel carries the CUDA sources as package data: built, installed apart from the checkout, they resolve."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from benchmarks.common import REPO_ROOT


@pytest.mark.slow
def test_wheel_ships_the_cuda_sources_and_they_resolve_when_installed(tmp_path):
    dist, target = tmp_path / "dist", tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(REPO_ROOT)], check=True, env=env, cwd=tmp_path, timeout=600)
    wheel = next(dist.glob("fba_reid-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"fba/kernels/cuda_sources/cross_attention.cu", "fba/kernels/cuda_sources/bindings.cpp"} <= set(names)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    probe = ("import fba.kernels.cross_attention_cuda as c; files = c.sources(); "
             "print(c.__file__); print(*files, sep='\\n'); assert all(f.is_file() for f in files)")
    result = subprocess.run([sys.executable, "-c", probe], env={**env, "PYTHONPATH": str(target)}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=True)
    lines = result.stdout.split()
    assert lines[0].startswith(str(target)), "the installed copy, not the checkout, was imported"
    assert [p.rsplit("/", 1)[1] for p in lines[1:]] == ["bindings.cpp", "cross_attention.cu"]
    assert all(p.startswith(str(target / "fba" / "kernels" / "cuda_sources")) for p in lines[1:])
