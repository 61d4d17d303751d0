"""`fba embed --backend onnxruntime|openvino|aoti` writes the features file the PyTorch backend writes."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fba.cli import main
from fba.retrieval.features_file import load_features


def embed(tmp_path, name, model, folder, *extra):
    out = tmp_path / f"{name}.safetensors"
    assert main(["embed", "--model", str(model), "--images", str(folder), "--out", str(out), "--batch-size", "4",
                 "--num-workers", "0", *extra]) == 0
    return load_features(out)


def assert_same_file(got, want) -> None:
    assert got.paths == want.paths and got.meta["feature"] == want.meta["feature"]
    np.testing.assert_allclose(got.features, want.features, atol=1e-4, rtol=0)


def test_onnxruntime_backend_writes_the_pytorch_file(checkpoint, exported, image_folder, tmp_path):
    want = embed(tmp_path, "pt", checkpoint, image_folder, "--image-only")
    got = embed(tmp_path, "ort", exported("onnx", "image"), image_folder, "--backend", "onnxruntime")
    assert_same_file(got, want)
    assert got.meta["backend"] == "onnxruntime" and want.meta["backend"] == "pytorch"


needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO is not installed (pip install openvino)")


@needs_openvino
@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_openvino_backend_writes_the_pytorch_file(checkpoint, exported, image_folder, tmp_path, hint):
    want = embed(tmp_path, "pt", checkpoint, image_folder, "--image-only")
    got = embed(tmp_path, "ov", exported("onnx", "image"), image_folder, "--backend", "openvino",
                "--performance-hint", hint)
    assert_same_file(got, want)
    assert got.meta["backend"] == "openvino"


@needs_openvino
@pytest.mark.slow
def test_openvino_full_feature_writes_the_pytorch_file(checkpoint, exported, image_folder, tmp_path):
    captions = ["--captions", str(image_folder / "captions.jsonl")]
    want = embed(tmp_path, "pt", checkpoint, image_folder, *captions)
    assert_same_file(embed(tmp_path, "ov", exported("onnx", "full"), image_folder, "--backend", "openvino",
                           *captions), want)


@pytest.mark.slow
def test_image_only_asked_of_a_full_export_is_refused(exported, image_folder, tmp_path, cli_error):
    cli_error(["embed", "--model", exported("onnx", "full"), "--images", image_folder, "--out", tmp_path / "x.npz",
               "--num-workers", "0", "--backend", "onnxruntime", "--image-only"], "export --feature image")


@pytest.mark.slow
def test_onnxruntime_full_feature_writes_the_pytorch_file(checkpoint, exported, image_folder, tmp_path):
    captions = ["--captions", str(image_folder / "captions.jsonl")]
    want = embed(tmp_path, "pt", checkpoint, image_folder, *captions)
    got = embed(tmp_path, "ort", exported("onnx", "full"), image_folder, "--backend", "onnxruntime", *captions)
    assert_same_file(got, want)
    assert got.features.shape == (11, 3 * 128)


@pytest.mark.slow
def test_aoti_backend_writes_the_pytorch_file(checkpoint, exported, image_folder, tmp_path):
    want = embed(tmp_path, "pt", checkpoint, image_folder, "--image-only")
    assert_same_file(embed(tmp_path, "aoti", exported("aoti", "image"), image_folder, "--backend", "aoti",
                                 "--trust-native-code"), want)


@pytest.mark.parametrize("change,message", [
    ("output", r"the graph has no output named features \(outputs: feats\)"),
    ("height", r"the graph takes images of shape \[.*48, 32\], but its metadata says \[N, 3, 64, 32\]"),
])
def test_a_graph_that_contradicts_its_metadata_is_refused_at_load(exported, image_folder, tmp_path, cli_error,
                                                                  change, message):
    import onnx

    proto = onnx.load(str(exported("onnx", "image") / "model.onnx"))
    if change == "output":
        for node in proto.graph.node:
            node.output[:] = ["feats" if name == "features" else name for name in node.output]
        proto.graph.output[0].name = "feats"
    else:
        proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 48
    (tmp_path / "bad").mkdir()
    onnx.save(proto, str(tmp_path / "bad" / "model.onnx"))
    cli_error(["embed", "--model", tmp_path / "bad", "--backend", "onnxruntime", "--images", image_folder, "--out",
               tmp_path / "x.npz", "--num-workers", "0"], message)
