"""The data-loader factory: the data set with its captions, and the DALI-or-torch choice made once per device."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _tiny_run import make_tiny_dataset, tiny_config
from fba.data.loaders import Loaders, dali_available, load_data

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("loaders"), train_ids=4, test_ids=3)


def test_load_data_attaches_captions_when_the_model_reads_them(root, tmp_path):
    dataset, store = load_data(tiny_config(root, tmp_path))
    assert store is not None and len(dataset.train) == 16 and len(dataset.query) == 3
    assert all(dataset.relpath(path) in store for path, _, _ in dataset.gallery)
    baseline, none = load_data(tiny_config(root, tmp_path, "model.cross_modal=false", "model.diversity=false",
                                           "model.pooling=false"))
    assert none is None and len(baseline.train) == 16
    eval_only, _ = load_data(tiny_config(root, tmp_path), eval_only=True)
    assert eval_only.train == [] and len(eval_only.gallery) == 6


def test_the_choice_follows_data_loader_and_the_device(root, tmp_path):
    auto = tiny_config(root, tmp_path, "data.loader=auto")
    assert Loaders.for_device(auto, "cpu").kind == "torch"
    assert Loaders.for_device(tiny_config(root, tmp_path, "data.loader=torch"), torch.device("cuda")).kind == "torch"
    assert Loaders.for_device(auto, torch.device("cuda")).dali == dali_available()


def test_eval_loader_serves_every_item_once_in_order(root, tmp_path):
    cfg = tiny_config(root, tmp_path, "data.eval_batch_size=4")
    dataset, _ = load_data(cfg)
    batches = list(Loaders.for_device(cfg, "cpu").eval(dataset.gallery))
    assert [len(b["index"]) for b in batches] == [4, 2]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6))
    assert torch.cat([b["pids"] for b in batches]).tolist() == [pid for _, pid, _ in dataset.gallery]


@needs_dali
def test_dali_loaders_give_the_same_batch_dict(root, tmp_path):
    cfg = tiny_config(root, tmp_path, "data.loader=dali", "data.eval_batch_size=4")
    dataset, _ = load_data(cfg)
    loaders = Loaders.for_device(cfg, "cpu")
    assert loaders.kind == "dali"
    batches = list(loaders.eval(dataset.gallery))
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6))
    assert batches[0]["images"].shape == (4, 3, 64, 32)
    train = loaders.train(dataset.train)
    train.set_epoch(0)
    batch = next(iter(train))
    assert batch["images"].shape == (8, 3, 64, 32) and set(batch) >= {"images", "pids", "camids", "index"}
