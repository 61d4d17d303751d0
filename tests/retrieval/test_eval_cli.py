"""``fba eval --features`` on the streaming path: --streaming on/off, --rerank, --aqe, --block give the same
numbers, and the table says how they were computed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fba.cli import main
from fba.retrieval.features_file import save_features


def _features_file(tmp_path, seed=0, num_ids=10, per_id=5, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    pids = np.repeat(np.arange(1, num_ids + 1), per_id)
    camids = np.tile(np.arange(per_id), num_ids)
    features = (centres[pids - 1] + 0.8 * rng.normal(size=(len(pids), dim))).astype(np.float32)
    distractors = rng.normal(size=(30, dim)).astype(np.float32)
    features = np.concatenate([features, distractors])
    pids = np.concatenate([pids, np.zeros(30, dtype=int)])
    camids = np.concatenate([camids, rng.integers(0, per_id, 30)])
    split = ["query" if c == 0 and p > 0 else "gallery" for p, c in zip(pids, camids)]
    return save_features(tmp_path / "feats.npz", features, [f"{i}.jpg" for i in range(len(pids))], pids=pids,
                         camids=camids, split=split)


@pytest.mark.parametrize("options", [[], ["--rerank"], ["--aqe", "3"], ["--rerank", "--aqe", "2", "--aqe-alpha", "1"]])
def test_streaming_and_in_memory_agree(tmp_path, capsys, options):
    path = _features_file(tmp_path)
    results = {}
    for mode in ("off", "on"):
        out = tmp_path / f"{mode}.json"
        argv = ["eval", "--features", str(path), "--streaming", mode, "--block", "7", "--json", str(out), *options]
        assert main(argv) == 0
        results[mode] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert results["on"]["streaming"] is True and results["off"]["streaming"] is False
    assert results["on"]["mAP"] == pytest.approx(results["off"]["mAP"], abs=1e-9)
    np.testing.assert_allclose(results["on"]["cmc"], results["off"]["cmc"], atol=1e-9)
    assert results["on"]["rerank"] is ("--rerank" in options)
    aqe = int(options[options.index("--aqe") + 1]) if "--aqe" in options else 0
    assert results["on"]["aqe"] == aqe
    assert "streamed" in printed and ("query expansion" in printed) and (f"k={aqe}" in printed or aqe == 0)


def test_safetensors_features_are_memory_mapped_and_split_without_copies(tmp_path, capsys):
    from fba.retrieval.features_file import load_features

    npz = _features_file(tmp_path)
    plain = load_features(npz)
    order = np.argsort([s != "query" for s in plain.split], kind="stable")  # query rows first, then gallery
    path = save_features(tmp_path / "feats.safetensors", plain.features[order], [plain.paths[i] for i in order],
                         pids=plain.pids[order], camids=plain.camids[order], split=[plain.split[i] for i in order])
    mapped = load_features(path, mmap=True)
    assert isinstance(mapped.features, np.memmap)
    np.testing.assert_array_equal(mapped.features, plain.features[order])
    gallery = mapped.select("gallery")
    assert isinstance(gallery.features, np.memmap) and np.shares_memory(gallery.features, mapped.features)
    np.testing.assert_array_equal(gallery.features, plain.select("gallery").features)
    results = []
    for source in (npz, path):
        out = tmp_path / "m.json"
        assert main(["eval", "--features", str(source), "--streaming", "on", "--block", "16", "--json", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["mAP"] == pytest.approx(results[1]["mAP"], abs=1e-12)


@pytest.mark.parametrize("option", [["--block", "0"], ["--aqe", "-1"], ["--streaming", "maybe"]])
def test_bad_options_exit_2(tmp_path, capsys, option):
    path = _features_file(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--features", str(path), *option])
    assert exit_info.value.code == 2 and option[0] in capsys.readouterr().err
