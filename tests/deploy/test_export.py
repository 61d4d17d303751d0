"""`fba export`: ONNX and AOTInductor models give `fba embed`'s PyTorch features (docs/deployment.md, "Exactness")."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from _deploy_models import inputs, make_checkpoint, pytorch_features
from fba.cli import main
from fba.deploy.export import export_model_file, file_sha256, read_metadata
from fba.embed.backends import load_exported
from fba.model.text import tokenize

BACKEND = {"onnx": "onnxruntime", "aoti": "aoti"}


def assert_exact(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    """The bar: fp32 max abs <= 1e-4 and cosine >= 0.99999 on every row."""
    want = want.numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    max_abs = float(np.abs(got - want).max())
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    print(f"{what}: max abs {max_abs:.2e}, min cosine {cosine.min():.8f}")
    assert max_abs <= 1e-4 and cosine.min() >= 0.99999, what


def check_format(fmt: str, feature: str, checkpoint, folder) -> None:
    with load_exported(folder, BACKEND[fmt], trust_native_code=True) as model:
        check_features(model, fmt, feature, checkpoint)
    if fmt == "aoti":  # torch extracted the package under the model's own folder, removed on close
        assert not model.extraction.exists()


def check_features(model, fmt: str, feature: str, checkpoint) -> None:
    if fmt == "aoti":
        assert any(model.extraction.glob("aotinductor_*"))
    for batch in (1, 7, 32):
        images, fg, bg = inputs(batch, seed=batch)
        captions = (fg, bg) if feature == "full" else None
        tokens = [tokenize(fg), tokenize(bg)] if captions else []
        reference = pytorch_features(checkpoint, images, captions)
        got = model(images, *tokens)
        assert_exact(got, reference, f"{fmt} {feature} batch {batch}")
        if batch == 32:  # the same images at other batch positions give the same rows
            order = torch.randperm(batch, generator=torch.Generator().manual_seed(1))
            moved = model(images[order], *[t[order] for t in tokens])
            assert_exact(moved, reference[order], f"{fmt} {feature} batch {batch} permuted")
            np.testing.assert_allclose(moved, got[order.numpy()], atol=1e-5, rtol=0)


def test_onnx_image_matches_pytorch(checkpoint, exported):
    check_format("onnx", "image", checkpoint, exported("onnx", "image"))


@pytest.mark.slow
def test_onnx_full_matches_pytorch(checkpoint, exported):
    check_format("onnx", "full", checkpoint, exported("onnx", "full"))


@pytest.mark.slow
@pytest.mark.parametrize("feature", ["image", pytest.param("full", marks=pytest.mark.skipif(
    os.environ.get("FBA_TEST_AOTI_FULL") != "1",
    reason="compiling the text tower takes 25 s on 2 cores; FBA_TEST_AOTI_FULL=1 runs it (the full feature's "
           "program is the one the ONNX tests check, and the AOTI loader takes the inputs the metadata names)"))])
def test_aoti_matches_pytorch(checkpoint, exported, feature):
    check_format("aoti", feature, checkpoint, exported("aoti", feature))


def test_onnx_graph_contract(exported):
    """Inputs and outputs as docs/deployment.md says: uint8 NCHW images, a dynamic batch axis, one output."""
    import onnx

    proto = onnx.load(str(exported("onnx", "image") / "model.onnx"))
    (images,), (features,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[1:] == [3, 64, 32] and isinstance(dims[0], str)
    assert features.name == "features"
    assert not [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")], "custom ops in the graph"


def test_inspect_prints_the_metadata(checkpoint, exported, capsys):
    folder = exported("onnx", "image")
    assert main(["export", "--inspect", str(folder / "model.onnx")]) == 0
    printed = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert json.loads(printed["feature"]) == "image" and json.loads(printed["feature_dim"]) == 128
    assert json.loads(printed["image_size"]) == [64, 32] and json.loads(printed["image_dtype"]) == "uint8"
    assert json.loads(printed["checkpoint_sha256"]) == file_sha256(checkpoint)
    assert len(json.loads(printed["mean"])) == 3 and json.loads(printed["fba_version"])


def test_other_class_count_and_stride_export_with_float_input(tmp_path):
    """The head's class count is not in the graph; another stride changes the token grid and still traces;
    ``--input-dtype float32`` takes 0..255 floats (for runtimes that feed only floats) and gives the same."""
    import onnxruntime as ort

    other = make_checkpoint(tmp_path / "model.pt", num_classes=5, stride=12, seed=3)
    path = export_model_file(other, tmp_path / "onnx", "onnx", "image", input_dtype="float32")
    meta = read_metadata(path)
    assert meta["stride"] == 12 and meta["image_dtype"] == "float32"
    images, _, _ = inputs(7, seed=5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"images": images.float().numpy()})[0]
    assert_exact(got, pytorch_features(other, images, None), "stride 12, 5 ids, float32 input")


def test_baseline_model_has_no_full_export(tmp_path, capsys):
    base = make_checkpoint(tmp_path / "model.pt", 4, 16, 0, "model.cross_modal=false", "model.diversity=false",
                           "model.pooling=false")
    assert main(["export", "--checkpoint", str(base), "--out", str(tmp_path / "x"), "--feature", "full"]) == 2
    assert "export --feature image" in capsys.readouterr().err


def _foreign_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "missing"])
def test_bad_model_files_give_one_line_errors(exported, tmp_path, capsys, kind):
    bad = tmp_path / "model.onnx"
    if kind == "garbage":
        bad.write_bytes(b"\x00\x01 this is not a protobuf" * 40)
    elif kind == "truncated":
        bad.write_bytes((exported("onnx", "image") / "model.onnx").read_bytes()[:50_000])
    elif kind == "foreign":
        _foreign_onnx(bad)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 64)).save(images / "a.jpg")
    for argv in (["export", "--inspect", str(bad)],
                 ["embed", "--backend", "onnxruntime", "--model", str(bad), "--images", str(images),
                  "--out", str(tmp_path / "f.npz"), "--num-workers", "0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err, err
        expected = {"foreign": "not an fba export", "missing": "not found"}.get(kind, "not a readable ONNX model")
        assert expected in err, err
