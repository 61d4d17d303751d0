"""Run folders: one run at a time (an OS lock, freed when its holder dies), no fresh run over another run's
checkpoints, resume never deletes, partial files of killed writers swept."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fba.train import checkpoint as ckpt
from fba.train.run_folder import RunFolderInUseError, claim_run_folder, sweep_partial_files
from fba.train.run_lock import RunFolderLockedError, RunLock

HOLD = """
import sys, time
from fba.train.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_is_refused_with_holder_pid_and_host_and_lock_frees_when_holder_dies(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunFolderLockedError, match=f"in use by another run \\(pid {proc.pid} on host "
                                                       f"{socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up runs: the OS frees the lock
        proc.wait()
    with RunLock(tmp_path) as lock:
        assert lock.held
        with pytest.raises(RunFolderLockedError, match=f"pid {os.getpid()}"):  # a second handle, same process
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # released on exit


def test_fba_train_refuses_a_locked_folder_with_exit_2(tmp_path, capsys):
    from fba.cli import main

    run = tmp_path / "run"
    proc = _holder(run)
    try:
        code = main(["train", "-c", "configs/synthetic.yaml", f"train.output_dir={run}",
                     f"data.root={tmp_path / 'absent'}"])
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"pid {proc.pid}" in err and err.startswith("fba train: error:")


def _fake_checkpoint(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "rng_rank0.pt").write_bytes(b"")
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"")


def test_fresh_run_over_another_runs_checkpoints_is_refused_unless_overwrite(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoints" / "epoch_0003")
    with pytest.raises(RunFolderInUseError, match="epoch_0003.*--resume.*--overwrite"):
        claim_run_folder(tmp_path, 0, resume=False, overwrite=False)
    RunLock(tmp_path).acquire().release()  # the refusal released the lock
    claim_run_folder(tmp_path, 0, resume=False, overwrite=True).release()
    claim_run_folder(tmp_path, 0, resume=True, overwrite=False).release()
    assert (tmp_path / "checkpoints" / "epoch_0003").is_dir()


def test_resume_tag_falls_back_to_newest_complete_checkpoint(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for tag in ("epoch_0001", "epoch_0002"):
        _fake_checkpoint(checkpoints / tag)
    (checkpoints / "epoch_0003").mkdir()  # no files: not a complete checkpoint
    assert ckpt.resume_tag(checkpoints) == ("epoch_0002", f"{checkpoints / 'latest'} is missing: resuming from the "
                                            f"newest complete checkpoint, {checkpoints / 'epoch_0002'}")
    (checkpoints / "latest").write_text("epoch_0001\n")
    assert ckpt.resume_tag(checkpoints)[0] == "epoch_0001"
    assert ckpt.resume_tag(tmp_path / "none") == (None, f"no complete checkpoint in {tmp_path / 'none'}")


def test_partial_files_of_dead_writers_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model.pt.{dead_pid}-0123abcd.tmp"
    live = tmp_path / f".model.pt.{os.getppid()}-0123abcd.tmp"  # a live writer's: kept
    partial = tmp_path / "checkpoints" / ".tmp-epoch_0004"
    mid_epoch = tmp_path / "checkpoints" / ".tmp-epoch_0004_step_00000012"  # train.checkpoint_every or a signal
    for path in (stale, live):
        path.write_bytes(b"x" * 10)
    partial.mkdir(parents=True)
    mid_epoch.mkdir()
    (tmp_path / "keep.tmp").write_bytes(b"")  # not of our naming
    assert sorted(sweep_partial_files(tmp_path)) == sorted([stale, partial, mid_epoch])
    assert live.exists() and (tmp_path / "keep.tmp").exists() and not stale.exists() and not partial.exists()
    assert not mid_epoch.exists()
