"""Exports for consumers that normalise their own crops: ``--input-norm`` (the ImageNet to CLIP affine folded into
the patch embedding) and ``--target boxmot|deepstream`` (docs/deployment.md, "Trackers")."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from _deploy_models import inputs, pytorch_features
from fba.cli import main
from fba.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fba.deploy.export import read_metadata
from fba.deploy.graph import fold_input_affine, imagenet_to_clip
from fba.retrieval.features_file import load_features
from test_export import assert_exact


def imagenet(images: torch.Tensor) -> np.ndarray:
    """What boxmot feeds for these RGB pixels: /255, then ImageNet's mean and std."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images.float() / 255 - mean) / std).numpy()


@pytest.mark.parametrize("kernel,stride,bias", [(16, 12, False), (5, 3, True), (4, 4, False)])
def test_a_folded_affine_is_the_convolution_of_the_affine(kernel, stride, bias):
    # fp32 error model: the folded weights are rounded once, and the bias term is a sum of 3*k*k products in
    # another order than the convolution's: a few fp32 eps of the output's scale
    gen = torch.Generator().manual_seed(kernel)
    conv = torch.nn.Conv2d(3, 7, kernel, stride=stride, bias=bias)
    x = torch.randn(2, 3, 37, 29, generator=gen)
    scale, shift = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5, torch.randn(3, generator=gen, dtype=torch.float64)
    want = conv(x * scale.float().view(1, 3, 1, 1) + shift.float().view(1, 3, 1, 1))
    got = fold_input_affine(conv, scale, shift)(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    with pytest.raises(ValueError, match="padded"):
        fold_input_affine(torch.nn.Conv2d(3, 4, 3, padding=1), scale, shift)


def test_imagenet_to_clip_maps_the_same_pixels():
    scale, shift = imagenet_to_clip()
    pixels = torch.rand(5, 3, dtype=torch.float64)
    from fba.data.transforms import CLIP_MEAN, CLIP_STD

    clip = (pixels - torch.tensor(CLIP_MEAN, dtype=torch.float64)) / torch.tensor(CLIP_STD, dtype=torch.float64)
    net = (pixels - torch.tensor(IMAGENET_MEAN, dtype=torch.float64)) / torch.tensor(IMAGENET_STD, dtype=torch.float64)
    torch.testing.assert_close(net * scale + shift, clip, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def boxmot_export(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("boxmot")
    assert main(["export", "--checkpoint", str(checkpoint), "--target", "boxmot", "--out", str(out)]) == 0
    return out


def test_boxmot_export_takes_imagenet_input_and_gives_fba_embed_features(checkpoint, boxmot_export):
    import onnxruntime as ort

    path = boxmot_export / "fba-reid-64x32.onnx"
    meta = read_metadata(path)
    assert (meta["image_dtype"], meta["input_norm"], meta["feature"]) == ("float32", "imagenet", "image")
    assert meta["input_mean"] == list(IMAGENET_MEAN) and meta["input_std"] == list(IMAGENET_STD)
    sidecar = json.loads((boxmot_export / "fba-reid-64x32.onnx.metadata.json").read_text())
    assert sidecar == {"schema_version": 1, "model_name": "fba_reid", "model_kwargs_schema_version": 1,
                       "model_kwargs": {"img_size": [64, 32]}}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    assert first.type == "tensor(float)" and session.get_outputs()[0].name == "features"
    for batch in (1, 7):
        images, _, _ = inputs(batch, seed=10 + batch)
        got = session.run(None, {first.name: imagenet(images)})[0]  # boxmot feeds the first input, takes output 0
        assert_exact(got, pytorch_features(checkpoint, images, None), f"boxmot export, batch {batch}")


def test_fba_embed_runs_a_tracker_export_with_the_same_features(checkpoint, boxmot_export, image_folder, tmp_path):
    """fba embed normalises the pixels as the export's input_norm says: the same features as the PyTorch path."""
    common = ["--images", str(image_folder), "--image-only", "--num-workers", "0"]
    assert main(["embed", "--model", str(checkpoint), *common, "--out", str(tmp_path / "pt.npz")]) == 0
    assert main(["embed", "--backend", "onnxruntime", "--model", str(boxmot_export), *common,
                 "--out", str(tmp_path / "ort.npz")]) == 0
    want, got = load_features(tmp_path / "pt.npz").features, load_features(tmp_path / "ort.npz").features
    assert_exact(got, torch.from_numpy(want), "fba embed of the boxmot export")


def test_exports_into_one_folder_never_overwrite_each_other(checkpoint, exported, tmp_path, capsys):
    out = tmp_path / "deploy"
    out.mkdir()
    for feature in ("image", "full"):  # the run's plain exports, each written by fba export into its own folder
        for made in exported("onnx", feature).iterdir():
            shutil.copy(made, out)
    for extra in (["--input-norm", "imagenet"], ["--target", "boxmot"], ["--target", "deepstream"]):
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), *extra]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fba-reid-64x32.onnx", "fba-reid-64x32.onnx.metadata.json", "model-float32.nvtracker-reid.yml",
                     "model-float32.onnx", "model-full.onnx", "model-imagenet.onnx", "model.onnx"]
    deepstream = (out / "model-float32.nvtracker-reid.yml").read_text()
    assert "inferDims: [3, 64, 32]" in deepstream and "netScaleFactor: 1.0" in deepstream
    assert "onnxFile: model-float32.onnx" in deepstream and "reidFeatureSize: 128" in deepstream
    assert read_metadata(out)["input_norm"] == "none"  # the folder's default export


@pytest.mark.parametrize("extra,message", [
    (["--target", "boxmot", "--feature", "full"], r"--target boxmot exports --feature image, not full"),
    (["--input-norm", "imagenet", "--input-dtype", "uint8"], r"--input-norm imagenet takes float32 images"),
])
def test_contradicting_export_options_are_one_line(checkpoint, tmp_path, cli_error, extra, message):
    cli_error(["export", "--checkpoint", checkpoint, "--out", tmp_path / "x", *extra], message)
    assert not (tmp_path / "x").exists()


def test_a_folder_of_several_exports_asks_for_the_file(boxmot_export, tmp_path, cli_error, image_folder):
    (boxmot_export.parent / "two").mkdir(exist_ok=True)
    two = boxmot_export.parent / "two"
    for name in ("a.onnx", "b.onnx"):
        (two / name).write_bytes((boxmot_export / "fba-reid-64x32.onnx").read_bytes())
    cli_error(["embed", "--backend", "onnxruntime", "--model", two, "--images", image_folder, "--image-only",
               "--out", tmp_path / "f.npz"], r"2 exported models in this folder \(a.onnx, b.onnx\); give the file")


def test_clip_normalised_input(checkpoint, tmp_path):
    import onnxruntime as ort

    from fba.data.transforms import ClipNormalise
    from fba.deploy.export import export_model_file

    path = export_model_file(checkpoint, tmp_path, "onnx", "image", "float32", input_norm="clip")
    assert path.name == "model-clip.onnx" and read_metadata(path)["input_norm"] == "clip"
    images, _, _ = inputs(5, seed=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"images": ClipNormalise()(images).numpy()})[0]
    assert_exact(got, pytorch_features(checkpoint, images, None), "clip-normalised input")
