"""Ctrl-C and SIGTERM at any moment of ``fba embed``, ``fba eval`` and ``fba caption`` (start-up, mid-run,
mid-write) exit 130 / 143 on one line, leave no temporary beside the output and no child process (DataLoader
workers) behind; a sharded ``fba embed`` under torchrun leaves no process of the run whether torchrun is signalled or a rank or the
launcher is SIGKILLed (docs/reliability.md, "Signals")."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from _processes import alive
from _tiny_run import make_tiny_dataset, untrained_model_file


@pytest.fixture(scope="module")
def embed_job(tmp_path_factory) -> dict:
    """An untrained tiny model.pt, a folder of 1,200 crops and a data set of 1,200 test images: enough work to be
    signalled mid-run."""
    base = tmp_path_factory.mktemp("signals")
    root = make_tiny_dataset(base / "data", train_ids=4, test_ids=400)
    images = base / "images"
    images.mkdir()
    sources = sorted((root / "bounding_box_train").iterdir())
    for i in range(1200):
        shutil.copyfile(sources[i % len(sources)], images / f"{i:05d}.jpg")
    config = base / "eval.yaml"
    config.write_text(f"data:\n  dataset: synthetic\n  root: {root}\n  height: 64\n  width: 32\n"
                      "  num_workers: 2\n  loader: torch\n")  # the batch size comes from _command
    return {"model": untrained_model_file(root, base, 4), "images": images, "base": base,
            "root": root, "config": config}


def _children_gone(pids: list[int], within_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + within_s
    running = pids
    while running and time.monotonic() < deadline:
        running = [p for p in running if alive(p)]
        time.sleep(0.2)
    return running


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    """A tiny random LLaVA saved as a local model folder (fba caption's default backend)."""
    from benchmarks.llava_shapes import TINY, llava_processor, random_llava

    folder = tmp_path_factory.mktemp("llava")
    processor = llava_processor(TINY)
    random_llava(TINY, processor).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _command(embed_job: dict, command: str, out: Path, request, batch: int = 2) -> list[str]:
    """``batch``: 2 makes a run slow enough to be signalled from outside; a signal at the write needs no slow run."""
    if command == "embed":
        return ["embed", "--model", str(embed_job["model"]), "--images", str(embed_job["images"]), "--image-only",
                "--out", str(out), "--device", "cpu", "--batch-size", str(batch), "--num-workers", "2"]
    if command == "eval":
        return ["eval", "--checkpoint", str(embed_job["model"]), "-c", str(embed_job["config"]), "--device", "cpu",
                "--save-features", str(out), "eval.feature=image", f"data.eval_batch_size={batch}"]
    return ["caption", "--dataset", "synthetic", "--root", str(embed_job["root"]), "--out", str(out),
            "--no-progress", "--model", str(request.getfixturevalue("llava_dir")), "--batch-size", "1", "--max-new-tokens", "6",
            "--max-new-tokens-bg", "5", "--device", "cpu"]


def _ranks(processes: list[psutil.Process], launcher: int) -> list[psutil.Process]:
    """The ranks among ``processes``: the launcher's children with a RANK (their DataLoader workers inherit it)."""
    ranks = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if p.ppid() == launcher and "RANK" in p.environ():
                ranks.append(p)
    return ranks


def _wait_for_work(proc: subprocess.Popen, command: str, out: Path) -> list[int]:
    """Wait until the command is mid-run: its DataLoader workers started, or (captions) its first line written.
    Returns the pids of its children."""
    deadline = time.monotonic() + 120
    children: list[int] = []
    while proc.poll() is None and time.monotonic() < deadline:
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        if (command == "caption" and out.is_file() and out.read_bytes().count(b"\n") >= 1) or len(children) >= 2:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"fba {command} never got to its work (exit {proc.poll()})")
    time.sleep(0.2)
    return children + [c.pid for c in psutil.Process(proc.pid).children(recursive=True) if c.pid not in children]


# The signal comes from the command itself once the output's bytes are written and before they are made durable
# (the temporary of a features file; the first appended caption line), a moment too short to hit from outside.
MID_WRITE = """
import os, signal, sys
import fba.utils.atomic
from fba.cli import main

fsync_path, fsync, raised = fba.utils.atomic.fsync_path, os.fsync, []

def signalled_once():
    if not raised:
        raised.append(1)
        signal.raise_signal({signum})

def fsync_path_signalled(path):
    if path.name.endswith(".tmp"):
        signalled_once()
    fsync_path(path)

def fsync_signalled(fd):
    signalled_once()
    fsync(fd)

fba.utils.atomic.fsync_path = fsync_path_signalled
if {caption}:
    os.fsync = fsync_signalled
sys.argv = ["fba", *{args!r}]
main()
"""

CASES = [("embed", signal.SIGINT, "start-up"), ("embed", signal.SIGTERM, "start-up"),
         ("embed", signal.SIGTERM, "mid-run"), ("embed", signal.SIGINT, "mid-run"),
         ("eval", signal.SIGINT, "start-up"), ("eval", signal.SIGTERM, "mid-run"), ("eval", signal.SIGINT, "mid-run"),
         ("caption", signal.SIGTERM, "start-up"), ("caption", signal.SIGTERM, "mid-run"),
         ("caption", signal.SIGINT, "mid-run"), ("embed", signal.SIGTERM, "mid-write"),
         ("eval", signal.SIGTERM, "mid-write"),
         ("caption", signal.SIGINT, "mid-write")]


@pytest.mark.parametrize("command,signum,moment", CASES)
def test_a_signal_at_any_moment_exits_on_one_line_and_leaves_nothing(embed_job, request, tmp_path, command, signum,
                                                                     moment):
    out = tmp_path / ("captions.jsonl" if command == "caption" else "features.safetensors")
    args = _command(embed_job, command, out, request, batch=64 if moment == "mid-write" else 2)
    if moment == "mid-write":
        args = ["-c", MID_WRITE.format(signum=int(signum), caption=command == "caption", args=args)]
    else:
        args = ["-m", "fba.cli", *args]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        if moment == "start-up":
            time.sleep(0.5)  # inside the imports of the command's work
        elif moment == "mid-run":
            children = _wait_for_work(proc, command, out)
        if moment != "mid-write":  # there the command signals itself (the loaders' workers are done by then)
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    name = "interrupted (SIGINT)" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"fba {command}: {name}", err
    assert _children_gone(children) == [], "child processes outlived the command"
    left = sorted(p.name for p in tmp_path.iterdir())
    if command == "caption" and moment != "start-up":  # the output itself: complete lines, which a rerun continues
        from fba.apps.captioner import resume

        assert left == ["captions.jsonl"] and 1 <= len(resume(out)) < 1200
    else:
        assert left == [], "a temporary or a partial output was left"


@pytest.mark.parametrize("moment,signum,target", [
    ("start-up", signal.SIGINT, "torchrun"), ("mid-run", signal.SIGTERM, "torchrun"),
    ("mid-run", signal.SIGKILL, "rank 1"), ("mid-run", signal.SIGKILL, "torchrun"), ("mid-write", signal.SIGTERM, "ranks"),
])
def test_a_sharded_embed_leaves_no_process_of_the_run(embed_job, tmp_path, moment, signum, target):
    """torchrun passes SIGINT/SIGTERM on to its ranks; when a rank dies, torchrun stops the others; when torchrun
    itself is SIGKILLed, each rank sees its launcher gone and unwinds (fba.utils.lifetime) instead of finishing the
    job unwatched; a rank signalled while writing its shard removes the temporary. DataLoader workers end with
    their rank in every case."""
    out = tmp_path / "out" / "features.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--model", str(embed_job["model"]), "--images", str(embed_job["images"]), "--image-only", "--out",
            str(out), "--device", "cpu", "--batch-size", "2", "--num-workers", "2"]
    if moment == "mid-write":  # each rank signals itself between writing its shard's bytes and their fsync
        script = tmp_path / "signalled.py"
        script.write_text(MID_WRITE.format(signum=int(signum), caption=False, args=["embed", *args]))
        program = [str(script)]
    else:
        program = ["-m", "fba.cli", "embed", *args]
    log = (tmp_path / "log").open("w")  # a file: the ranks inherit it, and a pipe would wait for them
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             *program], stdout=log, stderr=log, env=env)
    seen: dict[int, psutil.Process] = {}

    def look() -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            seen.update({c.pid: c for c in psutil.Process(proc.pid).children(recursive=True)})
        return list(seen.values())

    try:
        deadline = time.monotonic() + 180
        if moment == "start-up":
            # once both ranks are started, while they import: before that torchrun imports torch itself, where a
            # SIGINT is lost (the run went on and exited 0)
            while len(_ranks(look(), proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signum)
        elif moment == "mid-run":
            while len(look()) < 6 and proc.poll() is None and time.monotonic() < deadline:  # 2 ranks, 2 workers each
                time.sleep(0.1)
            assert len(seen) >= 6, f"the ranks' workers never started (exit {proc.poll()})"
            if target == "torchrun":
                proc.send_signal(signum)
            else:
                next(p for p in _ranks(look(), proc.pid) if p.environ().get("RANK") == "1").send_signal(signum)
        while proc.poll() is None and time.monotonic() < deadline:
            look()
            time.sleep(0.05)
        assert _children_gone(list(seen), within_s=15) == [], "processes of the run outlived it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        log.close()
    text = (tmp_path / "log").read_text()
    assert proc.returncode != 0, text[-2000:]
    assert not out.exists(), "the ranks went on without their launcher: " + text[-2000:]
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary was left"
