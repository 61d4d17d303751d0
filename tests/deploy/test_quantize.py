"""``fba export --quantize int8``: a QDQ ONNX model calibrated on crops, run by onnxruntime and OpenVINO through
``fba embed``, close to the fp32 export (docs/deployment.md, "int8")."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from _tiny_run import make_tiny_dataset
from fba.cli import main
from fba.deploy.export import read_metadata
from fba.retrieval.features_file import load_features


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Person-like crops of a tiny data set: its training split calibrates, its test split is embedded."""
    return make_tiny_dataset(tmp_path_factory.mktemp("int8") / "data", train_ids=16, test_ids=8)


def embed(model, folder, out, *extra):
    assert main(["embed", "--model", str(model), "--images", str(folder), "--image-only", "--num-workers", "0",
                 "--out", str(out), *extra]) == 0
    return load_features(out).features


NNCF = pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="NNCF is not installed (the nncf extra)")


@pytest.mark.parametrize("quantizer,name", [("onnxruntime", "model-int8.onnx"),
                                            pytest.param("nncf", "model-int8-nncf.onnx", marks=NNCF)])
def test_int8_export_runs_on_onnxruntime_and_openvino_close_to_fp32(checkpoint, crops, tmp_path, quantizer, name):
    import onnx

    out = tmp_path / "deploy"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--quantize", "int8", "--quantizer",
                 quantizer, "--calibration", str(crops / "bounding_box_train"), "--calibration-images", "64"]) == 0
    path = out / name
    assert read_metadata(path)["quantized"] == "int8" and read_metadata(path)["image_dtype"] == "uint8"
    assert read_metadata(path)["quantizer"] == quantizer
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 4  # the blocks' projections, the patch embedding
    test = crops / "bounding_box_test"
    want = embed(checkpoint, test, tmp_path / "fp32.npz")
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        got = embed(path, test, tmp_path / f"{backend}.npz", "--backend", backend)
        cosine = (got * want).sum(1)  # unit rows
        # the rows share a large common part (fp32 rows are >= 0.9 cosine to each other): what ranks is the rest
        centre = want.mean(0)
        apart = ((got - centre) * (want - centre)).sum(1) / (
            np.linalg.norm(got - centre, axis=1) * np.linalg.norm(want - centre, axis=1))
        print(f"int8 on {backend}: cosine to fp32 min {cosine.min():.5f}; of the centred rows min {apart.min():.4f}")
        # int8 error model: per-tensor activation scales from 64 crops, per-channel weights; ~1% per product
        assert cosine.min() >= 0.999 and apart.min() >= 0.98
        assert not np.allclose(got, want, atol=1e-6)  # it is the int8 model that ran


@pytest.mark.parametrize("extra,message", [
    (["--quantize", "int8"], r"--quantize int8 needs --calibration DIR"),
    (["--quantize", "int8", "--feature", "full", "--calibration", "."], r"quantizes the image feature"),
    (["--quantize", "int8", "--format", "aoti", "--calibration", "."], r"writes an ONNX model"),
])
def test_quantize_options_are_checked_before_the_work(checkpoint, tmp_path, cli_error, extra, message):
    cli_error(["export", "--checkpoint", checkpoint, "--out", tmp_path / "x", *extra], message)


def test_too_few_calibration_images_is_one_line(checkpoint, image_folder, tmp_path, cli_error):
    cli_error(["export", "--checkpoint", checkpoint, "--out", tmp_path / "x", "--quantize", "int8", "--calibration",
               image_folder], r"--calibration .*: 11 images; calibration needs at least 16")
