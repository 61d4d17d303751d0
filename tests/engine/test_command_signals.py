"""Ctrl-C and SIGTERM at any moment of ``fba embed`` (start-up, mid-run) exit 130 / 143 on one line, leave no
temporary beside the output and no child process (DataLoader workers) behind (docs/reliability.md, "Signals")."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

from _tiny_run import make_tiny_dataset, tiny_config
from fba.engine import checkpoint as ckpt


@pytest.fixture(scope="module")
def embed_job(tmp_path_factory) -> dict:
    """An untrained tiny model.pt and a folder of 1,200 crops: enough work to be signalled mid-run."""
    from fba.model import build_model

    base = tmp_path_factory.mktemp("signals")
    root = make_tiny_dataset(base / "data", train_ids=4, test_ids=2)
    cfg = tiny_config(root, base / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg.model, 4, (64, 32))
    images = base / "images"
    images.mkdir()
    sources = sorted((root / "bounding_box_train").iterdir())
    for i in range(1200):
        shutil.copyfile(sources[i % len(sources)], images / f"{i:05d}.jpg")
    return {"model": ckpt.export_model(model, base / "model.pt", cfg, 4, (64, 32)), "images": images, "base": base}


def _children_gone(pids: list[int], within_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + within_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


@pytest.mark.parametrize("signum,moment", [(signal.SIGINT, "start-up"), (signal.SIGTERM, "start-up"),
                                           (signal.SIGTERM, "mid-run"), (signal.SIGINT, "mid-run")])
def test_a_signal_at_any_moment_exits_on_one_line_and_leaves_nothing(embed_job, tmp_path, signum, moment):
    out = tmp_path / "features.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "fba.cli", "embed", "--model", str(embed_job["model"]), "--images",
                             str(embed_job["images"]), "--image-only", "--out", str(out), "--device", "cpu",
                             "--batch-size", "16", "--num-workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        if moment == "start-up":
            time.sleep(0.5)  # inside the imports of the command's work
        else:
            deadline = time.monotonic() + 120
            while len(children) < 2 and proc.poll() is None and time.monotonic() < deadline:
                children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
                time.sleep(0.05)
            assert len(children) >= 2, "the DataLoader workers never started"
            time.sleep(0.5)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    name = "interrupted (SIGINT)" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"fba embed: {name}", err
    assert _children_gone(children) == [], "child processes outlived the command"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a temporary or a partial output was left"
