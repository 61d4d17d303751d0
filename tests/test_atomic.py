import pytest

from fba.atomic import atomic_path, atomic_write_bytes


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
