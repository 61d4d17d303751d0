"""``fba export --target triton``: a model repository for Triton's onnxruntime backend whose configuration is what
the graph takes and gives and what ``fba serve``'s model takes and gives, read by Triton's own schema and
validated by a real ``tritonserver``."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from _deploy_models import inputs, pytorch_features
from fba.cli import main
from fba.deploy.export import read_metadata
from fba.model.text import tokenize
from test_export import assert_exact

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient is not installed (the serve extra)")
from google.protobuf import text_format  # noqa: E402  (comes with tritonclient)

ONNX_TYPES = {"tensor(uint8)": "TYPE_UINT8", "tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32"}


@pytest.fixture(scope="module")
def repository(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton")
    for feature in ("image", "full"):
        assert main(["export", "--checkpoint", str(checkpoint), "--target", "triton", "--feature", feature,
                     "--out", str(out)]) == 0
    return out


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_the_repository_layout_and_the_graph_it_serves(repository, checkpoint):
    import onnxruntime as ort

    assert sorted(str(p.relative_to(repository)) for p in repository.rglob("*") if p.is_file()) == [
        "fba_reid/1/model.onnx", "fba_reid/config.pbtxt", "fba_reid_full/1/model.onnx", "fba_reid_full/config.pbtxt"]
    images, fg, bg = inputs(5, seed=4)
    for model, feature in (("fba_reid", "image"), ("fba_reid_full", "full")):
        path = repository / model / "1" / "model.onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"images": images.numpy()}
        if feature == "full":
            feed.update(fg_tokens=tokenize(fg).numpy(), bg_tokens=tokenize(bg).numpy())
        got = session.run(["features"], feed)[0]
        assert_exact(got, pytorch_features(checkpoint, images, (fg, bg) if feature == "full" else None),
                     f"the repository's {feature} model")
        assert read_metadata(path)["feature"] == feature and read_metadata(path)["image_dtype"] == "uint8"


@pytest.mark.parametrize("model", ["fba_reid", "fba_reid_full"])
def test_the_config_is_the_graph_without_the_batch_axis(repository, model):
    import onnxruntime as ort

    config = parse(repository / model / "config.pbtxt")
    assert config.name == model and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    declared = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input}
    graph = {t.name: (ONNX_TYPES[t.type], t.shape[1:]) for t in session.get_inputs()}
    assert declared == graph and all(isinstance(t.shape[0], str) for t in session.get_inputs())  # batch: dynamic
    (output,) = config.output
    (graph_output,) = session.get_outputs()
    assert (output.name, model_config_pb2.DataType.Name(output.data_type), list(output.dims)) == (
        graph_output.name, ONNX_TYPES[graph_output.type], graph_output.shape[1:])
    contract = json.loads(config.parameters["fba_contract"].string_value)
    meta = read_metadata(repository / model / "1" / "model.onnx")
    assert contract["feature_dim"] == meta["feature_dim"] and contract["checkpoint_sha256"] == meta["checkpoint_sha256"]


def test_the_config_takes_and_gives_what_fba_serve_does(repository, checkpoint):
    from fba.serve.model import ServeSpec, describe
    from fba.serve.repository import Batching, model_config

    spec = ServeSpec(model=str(checkpoint), backend="pytorch", feature="full", device="cpu")
    served = text_format.Parse(model_config(spec, describe(spec), Batching(), 1, 1 << 24),
                               model_config_pb2.ModelConfig())
    exported = parse(repository / "fba_reid_full" / "config.pbtxt")
    serving = {t.name: (t.data_type, list(t.dims)) for t in served.input}
    for tensor in exported.input:  # fba serve also takes encoded files and caption text, optional inputs
        assert serving[tensor.name] == (tensor.data_type, list(tensor.dims))
    assert [(t.name, t.data_type, list(t.dims)) for t in served.output] == [
        (t.name, t.data_type, list(t.dims)) for t in exported.output]


def _tritonserver() -> tuple[Path, dict]:
    package = Path(importlib.util.find_spec("pytriton").submodule_search_locations[0])
    libs = [str(package.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    return package / "tritonserver", {"LD_LIBRARY_PATH": ":".join(libs), "PATH": str(Path(sys.executable).parent)}


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                    reason="nvidia-pytriton (the serve extra) is not installed: no tritonserver to validate with")
def test_tritonserver_accepts_the_configs(repository, tmp_path):
    """The wheel's tritonserver has only the Python backend: it reads and validates each config (a malformed or
    invalid one fails there, with another message) and then finds no onnxruntime backend, which a Triton release
    container has."""
    from benchmarks.bench_serve import free_ports

    root, env = _tritonserver()
    http, grpc, metrics = free_ports(3)

    def start(folder: Path) -> str:
        done = subprocess.run(
            [str(root / "bin" / "tritonserver"), f"--model-repository={folder}",
             f"--backend-directory={root / 'backends'}", "--http-address=127.0.0.1", f"--http-port={http}",
             "--grpc-address=127.0.0.1", f"--grpc-port={grpc}", "--metrics-address=127.0.0.1",
             f"--metrics-port={metrics}", "--allow-gpu-metrics=false", "--exit-on-error=true",
             "--disable-auto-complete-config"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0  # it stops by itself: no model could load
        return done.stdout + done.stderr

    log = start(repository)
    for model in ("fba_reid", "fba_reid_full"):
        assert (f"failed to load '{model}' version 1: Invalid argument: unable to find backend library for "
                "backend 'onnxruntime'") in log
    broken = tmp_path / "broken"
    (broken / "fba_reid" / "1").mkdir(parents=True)
    (broken / "fba_reid" / "1" / "model.onnx").write_bytes((repository / "fba_reid" / "1" / "model.onnx").read_bytes())
    config = (repository / "fba_reid" / "config.pbtxt").read_text()
    (broken / "fba_reid" / "config.pbtxt").write_text(config.replace("dims: [ 3, 64, 32 ]", "dims: [ ]"))
    assert "model input 'images' must specify 'dims'" in start(broken)  # the check above is Triton's validation


def test_triton_target_keeps_fba_serve_input(checkpoint, tmp_path, cli_error):
    cli_error(["export", "--checkpoint", checkpoint, "--target", "triton", "--input-dtype", "float32", "--out",
               tmp_path / "x"], r"--target triton exports --input-dtype uint8, not float32")
    assert not (tmp_path / "x").exists()
