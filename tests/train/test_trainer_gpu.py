"""The trainer on a CUDA device: bf16 (auto), fp16 with loss scaling, ZeRO-3 with the text cache, and the
`fba embed` / `fba eval --checkpoint` round trip of the ZeRO-3 model. The CPU twins are in test_trainer.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _tiny_run import make_tiny_dataset, tiny_config
from fba.cli import main
from fba.retrieval.features_file import load_features
from fba.train.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; CPU twins in test_trainer.py")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_gpu") / "data")


def _losses(metrics_path: Path) -> list[float]:
    return [r["loss/total"] for r in map(json.loads, metrics_path.read_text().splitlines()) if "loss/total" in r]


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_gpu_training_lowers_the_loss(tiny_root, tmp_path, precision):
    result = train(tiny_config(tiny_root, tmp_path / precision, "solver.epochs=2", f"train.precision={precision}",
                               "data.loader=torch"))
    losses = _losses(result.metrics_path)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.8 * losses[0]


def test_zero3_with_text_cache_then_embed_and_eval(tiny_root, tmp_path):
    result = train(tiny_config(tiny_root, tmp_path / "zero3", "solver.epochs=2", "train.zero_stage=3",
                               f"model.text_cache={tmp_path / 'cache'}", "data.loader=torch"))
    losses = _losses(result.metrics_path)
    assert losses[-1] < 0.8 * losses[0]
    features = tmp_path / "features.safetensors"
    assert main(["embed", "--model", str(result.model_path), "--images", str(tiny_root),
                 "--captions", str(tiny_root / "captions.jsonl"), "--out", str(features)]) == 0
    loaded = load_features(features)
    assert loaded.features.shape[0] == len(loaded.paths) and torch.isfinite(torch.as_tensor(loaded.features)).all()
    assert main(["eval", "-c", str(result.output_dir / "config.yaml"), "--checkpoint", str(result.model_path)]) == 0
