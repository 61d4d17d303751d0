"""`fba embed` (shape, order, image-only, captions keyed by relative path) and `fba eval --checkpoint`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _tiny_run import make_tiny_dataset, tiny_config
from fba.cli import main
from fba.data.loaders import dali_available
from fba.data.transforms import build_eval_transform, read_image
from fba.model.model_file import load_model
from fba.embed.embedder import Embedder
from fba.retrieval.features_file import load_features
from fba.train.trainer import train
from fba.model.text import tokenize


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("embed")
    root = make_tiny_dataset(base / "data", train_ids=4, test_ids=4)
    result = train(tiny_config(root, base / "run", "solver.epochs=1"))
    return root, result


def _reference(model_path: Path, root: Path, keys: list[str], with_captions: bool) -> torch.Tensor:
    """One image at a time through FBA.extract: row i must be the i-th path's feature."""
    model, cfg = load_model(model_path)
    transform = build_eval_transform(cfg.data.height, cfg.data.width)
    captions = {json.loads(l)["image"]: json.loads(l) for l in (root / "captions.jsonl").read_text().splitlines()}
    rows = []
    with torch.no_grad():
        for key in keys:
            image = transform(read_image(str(root / key)))[None]
            text = (tokenize([captions[key]["fg"]]), tokenize([captions[key]["bg"]])) if with_captions else None
            rows.append(model.extract(image, text))
    return torch.cat(rows)


def _assert_same_rows(got: torch.Tensor, reference: torch.Tensor) -> None:
    """Row i is image i: close to its own reference row (batched vs single-image float noise, amplified by the
    pooling mask's min-max normalisation, stays ~1e-3) and nearest to it among all rows."""
    torch.testing.assert_close(got, reference, atol=5e-3, rtol=0)
    assert torch.equal(torch.cdist(got, reference).argmin(dim=1), torch.arange(len(got)))


def test_embed_folder_with_captions_keeps_sorted_order(trained, tmp_path, capsys):
    root, result = trained
    out = tmp_path / "feats.safetensors"
    assert main(["embed", "--model", str(result.model_path), "--images", str(root), "--captions",
                 str(root / "captions.jsonl"), "--out", str(out), "--batch-size", "5", "--num-workers", "0"]) == 0
    fs = load_features(out)
    expected_keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert fs.paths == expected_keys and fs.features.shape == (len(expected_keys), 3 * 128)
    assert fs.meta["feature"] == "full"
    reference = _reference(result.model_path, root, expected_keys, with_captions=True)
    _assert_same_rows(torch.from_numpy(fs.features), reference)


def test_embed_list_image_only_keeps_list_order(trained, tmp_path):
    root, result = trained
    keys = sorted(p.relative_to(root).as_posix() for p in (root / "query").glob("*.jpg"))[::-1]
    listing = tmp_path / "list.txt"
    listing.write_text("# newest first\n" + "\n".join(keys) + "\n")
    out = tmp_path / "feats.npz"
    assert main(["embed", "--model", str(result.model_path), "--list", str(listing), "--root", str(root),
                 "--image-only", "--out", str(out), "--num-workers", "0"]) == 0
    fs = load_features(out)
    assert fs.paths == keys and fs.features.shape == (len(keys), 128) and fs.meta["feature"] == "image"
    reference = _reference(result.model_path, root, keys, with_captions=False)
    _assert_same_rows(torch.from_numpy(fs.features), reference)


def test_embed_names_images_without_captions(trained, tmp_path, cli_error):
    root, result = trained
    lines = (root / "captions.jsonl").read_text().splitlines()
    dropped = json.loads(lines[-1])["image"]
    partial = tmp_path / "captions.jsonl"
    partial.write_text("\n".join(lines[:-1]) + "\n")
    cli_error(["embed", "--model", result.model_path, "--images", root, "--captions", partial,
               "--out", tmp_path / "f.npz", "--num-workers", "0"], f"1 images have no captions.*{dropped}")
    cli_error(["embed", "--model", result.model_path, "--images", root, "--out", tmp_path / "f.npz"], "--captions")


def test_embedder_in_bf16_is_close_to_fp32(trained):
    _, result = trained
    model, _ = load_model(result.model_path)
    images = torch.randn(3, 3, 64, 32)
    captions = (["a red shirt", "a blue coat", "grey trousers"], ["a car", "a tree", "a bus stop"])
    full = Embedder(model, "cpu").embed(images, captions)
    half = Embedder(model, "cpu", torch.bfloat16).embed(images, captions)
    assert full.dtype == half.dtype == torch.float32 and full.shape == (3, 3 * 128)
    torch.testing.assert_close(half, full, atol=3e-2, rtol=3e-2)
    assert Embedder(model, "cpu").embed(images).shape == (3, 128)


def test_eval_checkpoint_mode_matches_the_trainers_evaluation(trained, tmp_path, capsys, cli_error):
    root, result = trained
    out = tmp_path / "metrics.json"
    assert main(["eval", "-c", str(result.output_dir / "config.yaml"), "--checkpoint", str(result.model_path),
                 "--json", str(out), "eval.feature=full"]) == 0
    table = capsys.readouterr().out
    assert "mAP" in table and "Rank-1" in table
    metrics = json.loads(out.read_text())
    assert metrics["feature"] == "full" and metrics["num_query"] == 4 and metrics["num_gallery"] == 8
    assert 100 * metrics["mAP"] == pytest.approx(result.final_metrics["eval/mAP"], abs=2.0)
    cli_error(["eval", "--checkpoint", result.model_path], "-c CONFIG")


def test_eval_saves_features_that_eval_features_scores_the_same(trained, tmp_path):
    root, result = trained
    saved, first, second = tmp_path / "feats.safetensors", tmp_path / "a.json", tmp_path / "b.json"
    assert main(["eval", "-c", str(result.output_dir / "config.yaml"), "--checkpoint", str(result.model_path),
                 "--save-features", str(saved), "--json", str(first), "eval.feature=full"]) == 0
    fs = load_features(saved)
    assert fs.split == ["query"] * 4 + ["gallery"] * 8
    assert len(fs.pids) == len(fs.camids) == len(fs.paths) == 12 and fs.meta["feature"] == "full"
    assert all((root / "query").as_posix() in p for p in fs.paths[:4])
    assert main(["eval", "--features", str(saved), "--json", str(second)]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-6) and a["cmc"] == pytest.approx(b["cmc"], abs=1e-6)


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
def test_embed_reads_through_the_loader_factory_dali_included(trained, tmp_path, monkeypatch):
    """``fba embed --loader dali`` decodes with DALI (the CPU pipeline here), as ``fba eval`` does, and gives
    the rows in the same order as the torch loader."""
    import fba.data.dali as dali

    root, result = trained
    built = []
    real = dali.build_dali_eval_loader
    monkeypatch.setattr(dali, "build_dali_eval_loader", lambda cfg, items: built.append(len(items)) or real(cfg, items))
    features = {}
    for loader in ("dali", "torch"):
        out = tmp_path / f"{loader}.npz"
        assert main(["embed", "--model", str(result.model_path), "--images", str(root / "query"), "--image-only",
                     "--out", str(out), "--num-workers", "0", "--loader", loader]) == 0
        features[loader] = torch.from_numpy(load_features(out).features)
    assert built == [len(features["torch"])]
    torch.testing.assert_close(features["dali"], features["torch"], atol=0.05, rtol=0)
    assert torch.equal(torch.cdist(features["dali"], features["torch"]).argmin(dim=1), torch.arange(built[0]))
