"""A real ``fba serve`` on 127.0.0.1 with free ports, started as a user starts it and stopped by its pid."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fba.serve.server import Ports, check_triton

READY_S = 240


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Serving:
    process: subprocess.Popen
    ports: Ports
    tmpdir: Path
    log: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"{self.ports.host}:{self.ports.http}"

    @property
    def grpc(self) -> str:
        return f"{self.ports.host}:{self.ports.grpc}"

    def text(self) -> str:
        return "".join(self.log)

    def metrics(self) -> dict[str, float]:
        """Triton's /metrics as ``{series with labels: value}``."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.ports.host}:{self.ports.metrics}/metrics", timeout=10) as answer:
            lines = answer.read().decode().splitlines()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


@contextmanager
def fba_serve(tmp_path: Path, *args: str):
    """``fba serve ARGS`` until it says ready; stopped (SIGTERM, then SIGKILL) by pid however the test ends."""
    problem = check_triton()
    if problem:
        pytest.skip(f"Triton cannot start here: {problem}")
    http, grpc, metrics = free_ports(3)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "fba.cli", "serve", *args, "--host", "127.0.0.1", "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    serving = Serving(process, Ports("127.0.0.1", http, grpc, metrics), tmpdir)
    threading.Thread(target=lambda: serving.log.extend(iter(process.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.monotonic() + READY_S
        while "ready (" not in serving.text():
            assert process.poll() is None, f"fba serve exited with {process.returncode}:\n{serving.text()}"
            assert time.monotonic() < deadline, f"fba serve not ready in {READY_S} s:\n{serving.text()}"
            time.sleep(0.2)
        yield serving
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
