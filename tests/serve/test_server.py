"""``fba serve`` driven by Triton's own clients (``tritonclient`` over HTTP and gRPC), as a tracker or a service
calls it: the features of ``fba embed``, concurrent clients, bad requests merged with good ones, a full queue,
the full feature, and SIGTERM under load. Skipped, with the check that failed, where Triton cannot start."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest

from _processes import alive
from _serving import fba_serve
from fba.cli import main
from fba.model.text import tokenize
from fba.retrieval.features_file import load_features
from fba.serve.requests import read_request, Limits

pytestmark = pytest.mark.slow

http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install -e '.[serve]')")
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install -e '.[serve]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "fba_reid"


@pytest.fixture(scope="module")
def files(checkpoint, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "image.npz"
    assert main(["embed", "--model", str(checkpoint), "--images", str(image_folder), "--image-only", "--num-workers",
                 "0", "--out", str(out)]) == 0
    return checkpoint, image_folder, load_features(out)


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    checkpoint, _, _ = files
    with fba_serve(tmp_path_factory.mktemp("server"), "--model", str(checkpoint), "--max-batch", "8",
                   "--max-queue-delay-us", "20000", "--max-queue-size", "8", "--max-pixels", "20000") as serving:
        yield serving


def crop_paths(crops):
    return sorted(crops.rglob("*.jpg"))


def bytes_input(module, blobs: list[bytes]):
    tensor = module.InferInput("image_bytes", [len(blobs), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b] for b in blobs], dtype=object))
    return tensor


def array_input(module, name: str, array: np.ndarray, datatype: str):
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def resized(crops) -> np.ndarray:
    blobs = [p.read_bytes() for p in crop_paths(crops)]
    return read_request({"image_bytes": np.array([[b] for b in blobs], dtype=object)}, "image", (64, 32),
                        Limits(max_rows=len(blobs))).images.numpy()


def test_features_over_http_and_grpc_are_fba_embeds(server, files):
    checkpoint, crops, want = files
    paths = crop_paths(crops)
    assert [p.relative_to(crops).as_posix() for p in paths] == want.paths
    client = http.InferenceServerClient(server.http)
    assert client.is_server_ready() and client.is_model_ready(MODEL)
    got = np.concatenate([client.infer(MODEL, [bytes_input(http, [p.read_bytes() for p in paths[i:i + 4]])])
                          .as_numpy("features") for i in range(0, len(paths), 4)])
    # fp32 on the CPU, the same kernels at another batch size: reduction-order rounding, ~1e-7 a value
    np.testing.assert_allclose(got, want.features, atol=1e-5, rtol=0)
    stub = grpc.InferenceServerClient(server.grpc)
    images = resized(crops)
    rows = np.concatenate([stub.infer(MODEL, [array_input(grpc, "images", images[i:i + 8], "UINT8")])
                           .as_numpy("features") for i in range(0, len(images), 8)])
    np.testing.assert_allclose(rows, want.features, atol=1e-5, rtol=0)
    contract = json.loads(client.get_model_config(MODEL)["parameters"]["fba_contract"]["string_value"])
    assert contract["feature"] == "image" and contract["feature_dim"] == want.features.shape[1]
    assert contract["image_size"] == [64, 32]
    assert contract["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    outputs = client.get_model_metadata(MODEL)["outputs"]
    assert outputs == [{"name": "features", "datatype": "FP32", "shape": [-1, want.features.shape[1]]}]


def test_concurrent_clients_get_their_own_rows_in_merged_batches(server, files):
    _, crops, want = files
    images = resized(crops)
    before = server.metrics()

    def client_loop(index: int) -> int:
        stub = grpc.InferenceServerClient(server.grpc)  # one client per thread, as tritonclient asks
        rows = [(index + k) % len(images) for k in range(2)]
        for _ in range(6):
            got = stub.infer(MODEL, [array_input(grpc, "images", images[rows], "UINT8")]).as_numpy("features")
            np.testing.assert_allclose(got, want.features[rows], atol=1e-5, rtol=0)
        return 6

    with ThreadPoolExecutor(6) as pool:
        assert sum(pool.map(client_loop, range(6))) == 36
    after = server.metrics()
    merged = 'fba_batch_requests_sum{model="fba_reid"}'
    calls = 'fba_batch_requests_count{model="fba_reid"}'
    requests, model_calls = after[merged] - before.get(merged, 0), after[calls] - before.get(calls, 0)
    assert requests == 36 and model_calls < 36, (requests, model_calls)  # Triton merged concurrent requests


def test_bad_requests_merged_with_good_ones_fail_alone(server, files):
    _, crops, want = files
    good = crop_paths(crops)[0].read_bytes()
    big = _png(np.zeros((300, 100, 3), np.uint8))
    cases = [
        ([bytes_input(http, [good])], None),
        ([bytes_input(http, [good, good[: len(good) // 2]])], r"image_bytes\[1\]: \d+ bytes, cannot be decoded"),
        ([bytes_input(http, [b"GET / HTTP/1.1"])], r"image_bytes\[0\]: 14 bytes, not an image"),
        ([bytes_input(http, [big])], r"100x300 pixels is over the server's limit of 20000"),
        ([array_input(http, "images", np.zeros((1, 3, 64, 32), np.float32), "FP32")], r"data-type is 'FP32', but model 'fba_reid' expects 'UINT8'"),
        ([array_input(http, "images", np.zeros((1, 3, 60, 32), np.uint8), "UINT8")], r"unexpected shape"),
        ([array_input(http, "images", np.zeros((0, 3, 64, 32), np.uint8), "UINT8")], r"."),
        ([array_input(http, "images", np.zeros((9, 3, 64, 32), np.uint8), "UINT8")], r"batch-size must be <= 8"),
        ([bytes_input(http, [good]), array_input(http, "fg_text", np.array([[b"a"]], dtype=object), "BYTES")],
         r"unexpected inference input 'fg_text'|takes no captions"),
        ([bytes_input(http, [good])], None),
    ]
    client = http.InferenceServerClient(server.http, concurrency=len(cases))
    pending = [client.async_infer(MODEL, inputs) for inputs, _ in cases]  # sent at once: merged by the batcher
    for (_, error), request in zip(cases, pending):
        if error is None:
            np.testing.assert_allclose(request.get_result().as_numpy("features"), want.features[:1], atol=1e-5, rtol=0)
        else:
            with pytest.raises(InferenceServerException, match=error) as caught:
                request.get_result()
            assert caught.value.status() in ("400", 400), caught.value
    errors = server.metrics()
    assert errors['fba_request_errors_total{model="fba_reid",reason="decode"}'] >= 2
    assert errors['fba_request_errors_total{model="fba_reid",reason="too_large"}'] >= 1
    assert client.infer(MODEL, [bytes_input(http, [good])]).as_numpy("features").shape == (1, want.features.shape[1])


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_full_queue_refuses_at_once_and_the_server_keeps_serving(server, files):
    _, crops, want = files
    images = resized(crops)[:8]
    stub = grpc.InferenceServerClient(server.grpc)
    outcomes: list = []
    done = threading.Semaphore(0)

    def answered(result, error) -> None:
        outcomes.append(error)
        done.release()

    start = time.monotonic()
    for _ in range(200):  # sent without waiting: far more than the 8 the queue holds
        stub.async_infer(MODEL, [array_input(grpc, "images", images, "UINT8")], answered)
    for _ in range(200):
        assert done.acquire(timeout=60)
    refused = [str(e) for e in outcomes if e is not None]
    assert refused and len(refused) < 200, len(refused)
    assert all("Exceeds maximum queue size" in message for message in refused), refused[:3]
    assert time.monotonic() - start < 60
    got = stub.infer(MODEL, [array_input(grpc, "images", images[:1], "UINT8")]).as_numpy("features")
    np.testing.assert_allclose(got, want.features[:1], atol=1e-5, rtol=0)


def test_full_feature_from_text_or_token_ids_is_fba_embeds(files, exported, tmp_path):
    _, crops, _ = files
    out = exported("onnx", "full")
    assert main(["embed", "--model", str(out), "--backend", "onnxruntime", "--images", str(crops), "--num-workers",
                 "0", "--captions", str(crops / "captions.jsonl"), "--out", str(tmp_path / "full.npz")]) == 0
    want = load_features(tmp_path / "full.npz")
    captions = {r["image"]: r for r in map(json.loads, (crops / "captions.jsonl").read_text().splitlines())}
    fg = [captions[p]["fg"] for p in want.paths]
    bg = [captions[p]["bg"] for p in want.paths]
    images = resized(crops)
    with fba_serve(tmp_path, "--model", str(out), "--backend", "onnxruntime", "--feature", "full",
                   "--max-batch", "16") as serving:
        client = http.InferenceServerClient(serving.http)
        text = [array_input(http, "fg_text", np.array([[t.encode()] for t in fg], dtype=object), "BYTES"),
                array_input(http, "bg_text", np.array([[t.encode()] for t in bg], dtype=object), "BYTES")]
        got = client.infer(MODEL, [array_input(http, "images", images, "UINT8"), *text]).as_numpy("features")
        np.testing.assert_allclose(got, want.features, atol=1e-5, rtol=0)
        stub = grpc.InferenceServerClient(serving.grpc)
        ids = [array_input(grpc, "fg_tokens", tokenize(fg).numpy(), "INT64"),
               array_input(grpc, "bg_tokens", tokenize(bg).numpy(), "INT64")]
        got = stub.infer(MODEL, [array_input(grpc, "images", images, "UINT8"), *ids]).as_numpy("features")
        np.testing.assert_allclose(got, want.features, atol=1e-5, rtol=0)
        one = array_input(http, "images", images[:1], "UINT8")
        street = array_input(http, "bg_text", np.array([[b"a street"]], dtype=object), "BYTES")
        long = array_input(http, "fg_text", np.array([[b"word " * 80]], dtype=object), "BYTES")
        with pytest.raises(InferenceServerException, match=r"fg_text\[0\] is over 75 CLIP tokens"):
            client.infer(MODEL, [one, long, street])
        with pytest.raises(InferenceServerException, match=r"needs both captions.* \(given: bg_text\)"):
            client.infer(MODEL, [one, street])


def test_sigterm_under_load_drains_exits_0_and_leaves_nothing(files, tmp_path):
    checkpoint, crops, want = files
    images = resized(crops)[:2]
    with fba_serve(tmp_path, "--model", str(checkpoint), "--drain-timeout", "5") as serving:
        pid = serving.process.pid
        seen = [child.pid for child in psutil.Process(pid).children(recursive=True)]
        assert len(seen) >= 2, seen  # tritonserver and its backend stub
        outcomes: list[tuple[float, str]] = []  # (when the request was sent, what came back)
        stop = threading.Event()

        def load() -> None:
            stub = grpc.InferenceServerClient(serving.grpc)
            while not stop.is_set():
                start = time.monotonic()
                try:
                    got = stub.infer(MODEL, [array_input(grpc, "images", images, "UINT8")], client_timeout=30)
                    np.testing.assert_allclose(got.as_numpy("features"), want.features[:2], atol=1e-5, rtol=0)
                    outcomes.append((start, "ok"))
                except InferenceServerException as err:
                    outcomes.append((start, str(err)))
                    time.sleep(0.05)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        while sum(o == "ok" for _, o in outcomes) < 20:
            time.sleep(0.05)
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        code = serving.process.wait(timeout=60)
        took = time.monotonic() - sent
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert code == 0 and took < 5 + 15, (code, took, serving.text()[-2000:])
    in_flight = [o for started, o in outcomes if started < sent]
    assert in_flight and all(o == "ok" for o in in_flight), set(in_flight)  # sent before SIGTERM: answered
    # sent after the drain began: refused (the scheduler stopping, the model unloaded, the connection closed while
    # the server stopped, nothing listening); never a model error
    refused = ("Server is stopping", "has no available versions", "CANCELLED", "Connection refused", "Socket closed")
    late = [o for started, o in outcomes if started >= sent and o != "ok"]
    assert all(any(r in o for r in refused) for o in late), set(late)
    assert "draining" in serving.text() and "stopped" in serving.text()
    left = [p for p in seen if alive(p)]
    assert left == [], left
    assert list(serving.tmpdir.glob("fba-serve-*")) == []
    assert [p for p in os.listdir("/dev/shm") if p.startswith(f"fba-serve-{pid}-")] == []


def test_the_written_repository_serves_on_a_plain_tritonserver(files, tmp_path):
    """``fba serve --write-repository`` gives the repository a Triton deployment runs: started here with no
    ``fba serve`` around it, it answers with ``fba embed``'s features."""
    from fba.serve.server import Ports, TritonServer, check_triton
    from benchmarks.bench_serve import free_ports

    checkpoint, crops, want = files
    assert main(["serve", "--model", str(checkpoint), "--write-repository", str(tmp_path / "models")]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "models").rglob("*") if p.is_file()) == [
        "models/fba_reid/1/model.py", "models/fba_reid/config.pbtxt"]
    if check_triton():
        pytest.skip(f"Triton cannot start here: {check_triton()}")
    ports = Ports("127.0.0.1", *free_ports(3))
    server = TritonServer(ports)
    try:
        shutil.copytree(tmp_path / "models", server.repository)
        server.start()
        deadline = time.monotonic() + 240
        while not server.ready():
            assert server.running() and time.monotonic() < deadline
            time.sleep(0.2)
        client = http.InferenceServerClient(f"127.0.0.1:{ports.http}")
        got = client.infer(MODEL, [array_input(http, "images", resized(crops)[:4], "UINT8")]).as_numpy("features")
        np.testing.assert_allclose(got, want.features[:4], atol=1e-5, rtol=0)
        client.close()
    finally:
        assert server.stop() == 0
    assert not server.workspace.exists()
