"""A real ``fba serve`` on 127.0.0.1 with free ports (:func:`benchmarks.bench_serve.launch`: started as a user
starts it, stopped by its pid), and its metrics."""
from __future__ import annotations

import os
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.bench_serve import Launched, launch
from fba.serve.server import check_triton


@dataclass
class Serving:
    launched: Launched
    tmpdir: Path

    @property
    def process(self):
        return self.launched.process

    @property
    def http(self) -> str:
        return self.launched.http

    @property
    def grpc(self) -> str:
        return self.launched.grpc

    def text(self) -> str:
        return "".join(self.launched.log)

    def metrics(self) -> dict[str, float]:
        """Triton's /metrics as ``{series with labels: value}``."""
        with urllib.request.urlopen(f"http://{self.launched.metrics}/metrics", timeout=10) as answer:
            lines = answer.read().decode().splitlines()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}


@contextmanager
def fba_serve(tmp_path: Path, *args: str):
    """``fba serve ARGS`` with its own TMPDIR (so a test can see what it leaves there), until it says ready."""
    problem = check_triton()
    if problem:
        pytest.skip(f"Triton cannot start here: {problem}")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    with launch(list(args), env=dict(os.environ, TMPDIR=str(tmpdir)), ready_s=240) as launched:
        yield Serving(launched, tmpdir)
