import pytest

from fba.utils.atomic import atomic_path, atomic_write_bytes


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out" / "model.pt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]


def test_the_temporary_is_hidden_from_globs_of_real_files(tmp_path):
    target = tmp_path / "shard.safetensors"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".tmp"
        assert not target.exists()
    assert target.read_bytes() == b"new"


def test_the_next_write_sweeps_what_a_killed_writer_left(tmp_path):
    """A SIGKILLed writer cannot clean up; the next write of the same file removes its temporary, never one whose
    writer still runs, nor another file's."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    target = tmp_path / "model.onnx"
    left = tmp_path / f".model.onnx.{dead_pid}-0badc0de.tmp"
    live = tmp_path / f".model.onnx.{os.getpid()}-1234abcd.tmp"
    other = tmp_path / f".other.onnx.{dead_pid}-0badc0de.tmp"
    for path in (left, live, other):
        path.write_bytes(b"partial")
    atomic_write_bytes(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])
