"""A full disk or an I/O error names the file and the free space, and leaves no partial file or checkpoint."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fba.utils.atomic import DiskWriteError, atomic_write_bytes
from fba.train import checkpoint as ckpt


def test_enospc_in_an_atomic_write_names_path_and_free_space(tmp_path, monkeypatch):
    target = tmp_path / "features.npz"
    target.write_bytes(b"old")

    def full(self, data):  # part of the data lands, then the disk is full
        with open(self, "wb") as out:
            out.write(data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskWriteError, match=rf"cannot write {target}: No space left on device; [\d.]+ \w+ free there"):
        atomic_write_bytes(target, b"new contents")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["features.npz"]


def test_torch_save_failing_mid_checkpoint_removes_the_partial_folder(tmp_path, monkeypatch):
    from test_checkpoint import _engine, _step

    engine, _ = _engine()
    _step(engine)
    ckpt.save_checkpoint(engine, tmp_path, "epoch_0001", {"epoch": 0, "step": 1})
    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # what torch raises when the disk fills mid-write
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 2048")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskWriteError, match=r"cannot write .*\.tmp-epoch_0002: the write failed .*; [\d.]+ \w+ free"):
        ckpt.save_checkpoint(engine, tmp_path, "epoch_0002", {"epoch": 1, "step": 2})
    monkeypatch.undo()
    assert ckpt.latest_tag(tmp_path) == "epoch_0001"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch_0001"]




def test_real_file_size_limit_in_a_subprocess(tmp_path):
    """RLIMIT_FSIZE makes every write past 64 KiB fail for real, as a full disk does."""
    target = tmp_path / "big.bin"
    code = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
            "from fba.utils.atomic import atomic_write_bytes\n"
            f"atomic_write_bytes({str(target)!r}, bytes(1 << 20))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 1
    assert f"DiskWriteError: cannot write {target}: File too large;" in proc.stderr and "free there" in proc.stderr
    assert list(tmp_path.iterdir()) == []
