"""What ``fba serve`` does with one request, without Triton (runs everywhere): the checks that answer a bad request
with its own error, the decode that must equal ``fba embed``'s, and the served model against ``fba embed``."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from fba.cli import main
from fba.data.transforms import build_eval_uint8_transform, read_image
from fba.model.text import tokenize
from fba.retrieval.features_file import load_features
from fba.serve.model import ServedModel, ServeSpec
from fba.serve.repository import Batching, model_config
from fba.serve.requests import Limits, RequestError, read_request

SIZE = (64, 32)
LIMITS = Limits(max_rows=8, max_pixels=100 * 100)


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def pixels(rows: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (rows, 3, *SIZE), dtype=np.uint8)


def blobs(*items: bytes) -> np.ndarray:
    return np.array([[item] for item in items], dtype=object)


def test_encoded_images_are_decoded_and_resized_as_fba_embed_reads_files(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (70, 35, 3), dtype=np.uint8)
    (tmp_path / "a.jpg").write_bytes(encoded(image, "JPEG"))
    want = build_eval_uint8_transform(*SIZE)(read_image(str(tmp_path / "a.jpg")))
    rows = read_request({"image_bytes": blobs((tmp_path / "a.jpg").read_bytes())}, "image", SIZE, LIMITS)
    assert rows.images.dtype == torch.uint8 and torch.equal(rows.images[0], want)


def test_captions_are_tokenised_as_fba_embed_tokenises_them():
    texts = ["a person in a red coat", "a street with cars"]
    rows = read_request({"images": pixels(), "fg_text": blobs(*(t.encode() for t in texts)),
                         "bg_text": blobs(b"x", b"y")}, "full", SIZE, LIMITS)
    assert torch.equal(rows.fg_tokens, tokenize(texts)) and rows.bg_tokens.shape == (2, 77)
    tokens = tokenize(texts).numpy()
    rows = read_request({"images": pixels(), "fg_tokens": tokens, "bg_tokens": tokens}, "full", SIZE, LIMITS)
    assert torch.equal(rows.bg_tokens, tokenize(texts))


JPEG = encoded(np.zeros((70, 35, 3), np.uint8), "JPEG")
BAD = [
    ({"image_bytes": blobs(JPEG, JPEG[: len(JPEG) // 2])}, "image", r"image_bytes\[1\]: \d+ bytes, cannot be decoded", "decode"),
    ({"image_bytes": blobs(b"this is not an image")}, "image", r"image_bytes\[0\]: 20 bytes, not an image", "decode"),
    ({"image_bytes": blobs(encoded(np.zeros((200, 100, 3), np.uint8)))}, "image", r"100x200 pixels is over the server's limit of 10000", "too_large"),
    ({"images": pixels().astype(np.float32)}, "image", r"images must be uint8 RGB pixels, got float32", "dtype"),
    ({"images": pixels()[:, :, :60]}, "image", r"images must be \[N, 3, 64, 32\] .* got \[2, 3, 60, 32\]", "shape"),
    ({"images": pixels(0)}, "image", r"images holds no image: an empty batch", "empty"),
    ({"images": pixels(9)}, "image", r"holds 9 images, over the server's --max-batch 8", "shape"),
    ({"images": pixels(), "image_bytes": blobs(JPEG)}, "image", r"exactly one of images .* not images and image_bytes", "inputs"),
    ({}, "image", r"not neither", "inputs"),
    ({"images": pixels(), "fg_text": blobs(b"a", b"b"), "bg_text": blobs(b"a", b"b")}, "image", r"image-only feature and takes no captions", "feature"),
    ({"images": pixels(), "fg_text": blobs(b"a", b"b")}, "full", r"needs both captions.* \(given: fg_text\)", "captions"),
    ({"images": pixels(), "fg_text": blobs(b"a", b"b"), "bg_text": blobs(b"a")}, "full", r"bg_text holds 1 captions for 2 images", "captions"),
    ({"images": pixels(), "fg_text": blobs(b"a", b"word " * 80), "bg_text": blobs(b"a", b"b")}, "full", r"fg_text\[1\] is over 75 CLIP tokens", "captions"),
    ({"images": pixels(), "fg_text": blobs(b"a", b"\xff\xfe"), "bg_text": blobs(b"a", b"b")}, "full", r"fg_text\[1\] is not UTF-8", "captions"),
    ({"images": pixels(), "fg_tokens": np.zeros((2, 77), np.int32), "bg_tokens": np.zeros((2, 77), np.int32)}, "full", r"fg_tokens must be int64", "dtype"),
    ({"images": pixels(), "fg_tokens": np.full((2, 77), 50000), "bg_tokens": np.zeros((2, 77), np.int64)}, "full", r"outside CLIP's vocabulary", "captions"),
]


@pytest.mark.parametrize("inputs,feature,message,reason", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_a_bad_request_is_refused_with_its_reason(inputs, feature, message, reason):
    with pytest.raises(RequestError) as caught:
        read_request(inputs, feature, SIZE, LIMITS)
    assert re.search(message, str(caught.value)) and caught.value.reason == reason, str(caught.value)


def test_a_caption_of_75_tokens_fits_and_76_does_not():
    fits = " ".join(["a"] * 75)
    assert (tokenize([fits])[0] != 0).sum() == 77  # SOS, 75 words, EOT: the whole context
    read_request({"images": pixels(1), "fg_text": blobs(fits.encode()), "bg_text": blobs(b"b")}, "full", SIZE, LIMITS)
    with pytest.raises(RequestError, match="over 75 CLIP tokens"):
        read_request({"images": pixels(1), "fg_text": blobs((fits + " a").encode()), "bg_text": blobs(b"b")}, "full",
                     SIZE, LIMITS)


@pytest.fixture(scope="module")
def served_files(checkpoint, image_folder, exported):
    return checkpoint, image_folder, exported("onnx", "full")


def _decoded(crops) -> torch.Tensor:
    paths = sorted(crops.rglob("*.jpg"))
    return read_request({"image_bytes": blobs(*(p.read_bytes() for p in paths))}, "image", SIZE,
                        Limits(max_rows=len(paths))).images


@pytest.mark.parametrize("backend,feature", [("pytorch", "image"), ("pytorch", "full"), ("onnxruntime", "full")])
def test_the_served_model_gives_fba_embeds_rows(served_files, tmp_path, backend, feature):
    """The server's model object, fed what the server decodes, against ``fba embed`` on the same files."""
    import json

    checkpoint, crops, onnx = served_files
    model = checkpoint if backend == "pytorch" else onnx
    extra = ["--image-only"] if feature == "image" else ["--captions", str(crops / "captions.jsonl")]
    assert main(["embed", "--model", str(model), "--backend", backend, "--images", str(crops), "--num-workers", "0",
                 "--out", str(tmp_path / "want.npz"), *extra]) == 0
    want = load_features(tmp_path / "want.npz").features
    served = ServedModel(ServeSpec(model=str(model), backend=backend, feature=feature, batches=(1, 4)))
    assert served.warm() == [1, 4]
    tokens = [None, None]
    if feature == "full":
        records = [json.loads(line) for line in (crops / "captions.jsonl").read_text().splitlines()]
        by_name = {r["image"]: r for r in records}
        names = [p.relative_to(crops).as_posix() for p in sorted(crops.rglob("*.jpg"))]
        tokens = [tokenize([by_name[n][part] for n in names]) for part in ("fg", "bg")]
    got = served(_decoded(crops), *tokens)
    # fp32 on the CPU, the same kernels at another batch size: reduction-order rounding, ~1e-7 a value
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert served.contract["feature_dim"] == want.shape[1]


def test_the_repository_config_states_the_contract_and_the_bounded_queue(served_files):
    checkpoint, _, _ = served_files
    spec = ServeSpec(model=str(checkpoint), feature="full")
    from fba.serve.model import describe

    config = model_config(spec, describe(spec), Batching(max_batch=16, max_queue_size=5, queue_timeout_us=2000,
                                                        instances=2), threads=1, max_pixels=999)
    for line in ['max_batch_size: 16', 'name: "images" data_type: TYPE_UINT8 dims: [ 3, 64, 32 ] optional: true',
                 'name: "fg_text" data_type: TYPE_STRING', 'name: "bg_tokens" data_type: TYPE_INT64 dims: [ 77 ]',
                 'max_queue_size: 5 timeout_action: REJECT', 'default_timeout_microseconds: 2000',
                 'count: 2 kind: KIND_CPU', '{ key: "fba_max_pixels" value: { string_value: "999" } }']:
        assert line in config, line


def test_deployment_docs_triton_repository_has_the_served_models_inputs_and_output():
    """docs/deployment.md's model repository (an ONNX export on Triton's onnxruntime backend) takes and gives what
    ``fba serve`` does for the paper's model: the same names, types and dims."""
    from pathlib import Path

    from fba.config import DataConfig
    from fba.model.backbone import ARCHS

    text = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    block = text[text.index('name: "fba_reid"\nplatform: "onnxruntime_onnx"'):]
    block = block[:block.index("```")]
    height, width = DataConfig().height, DataConfig().width
    served = model_config(ServeSpec(model="model.pt"), {"image_size": [height, width],
                                                        "feature_dim": ARCHS["ViT-B-16"].vision.width},
                          Batching(), threads=1, max_pixels=1)
    documented = re.findall(r'name: "(\w+)", data_type: (\w+), dims: \[ ([\d, ]+) \]', block)
    generated = re.findall(r'name: "(\w+)" data_type: (\w+) dims: \[ ([\d, ]+) \]', served)
    assert documented == [g for g in generated if g[0] in ("images", "features")], (documented, generated)
    assert 'name: "fba_reid"' in served and "max_batch_size:" in block
