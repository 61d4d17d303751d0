"""`torchrun -m fba.cli embed`: shards per rank merged in input order; a rerun keeps finished shards."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fba.cli import main
from fba.embed import shards
from fba.retrieval.features_file import load_features


def torchrun_embed(args: list[str], world: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "fba.cli", "embed", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow  # two torchrun launches of two ranks each
def test_sharded_embedding_equals_one_process_and_reruns_keep_finished_shards(checkpoint, image_folder, tmp_path):
    common = ["--model", str(checkpoint), "--images", str(image_folder), "--captions",
              str(image_folder / "captions.jsonl"), "--batch-size", "3", "--num-workers", "0"]
    single = tmp_path / "single.npz"
    assert main(["embed", *common, "--out", str(single)]) == 0
    want = load_features(single)

    merged = tmp_path / "merged.npz"
    torchrun_embed([*common, "--out", str(merged)])
    got = load_features(merged)
    assert got.paths == want.paths and got.meta == want.meta
    np.testing.assert_allclose(got.features, want.features, atol=1e-5, rtol=0)
    assert not shards.shard_dir(merged).exists()

    # A run killed after rank 0 finished: rank 0's shard is there (marked so the rerun shows it was kept, not
    # redone), rank 1 left a temporary file and an old shard of another job.
    rerun = tmp_path / "rerun.npz"
    job = shards.shard_job(dict(want.meta), checkpoint)
    reference = torch.from_numpy(want.features)
    shards.write_shard(rerun, want.paths, job, lambda rows: -reference[rows.start:rows.stop], 0, 2)
    shards.write_shard(rerun, want.paths, dict(job, model_file="another"), lambda rows: reference[rows.start:rows.stop], 1, 2)
    stale = shards.shard_dir(rerun) / ".shard-00001-of-00002.npz.999-dead.tmp"
    stale.write_bytes(b"half a file")
    done = torchrun_embed([*common, "--out", str(rerun)])
    assert "rank 0 keeps its shard" in done.stdout and "rank 1 keeps" not in done.stdout
    got = load_features(rerun).features
    half = len(want.paths) // 2
    np.testing.assert_array_equal(got[:half], -want.features[:half])
    np.testing.assert_allclose(got[half:], want.features[half:], atol=1e-5, rtol=0)
    assert not shards.shard_dir(rerun).exists()
