"""One request of ``fba serve`` to the model's inputs, or a :class:`RequestError` that names what is wrong.

A request carries images either as ``images`` (uint8 [n, 3, H, W] RGB, already resized to the model's size) or
as ``image_bytes`` (n encoded files, decoded and resized here exactly as ``fba embed`` does: PIL, RGB, bicubic
to the model's size), and, for the full feature, the two captions as text (``fg_text``/``bg_text``, tokenised
here) or as CLIP token ids (``fg_tokens``/``bg_tokens``). Everything is checked before the model sees a row,
so a bad request is answered with its own error and never takes down the batch it was merged into.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from fba.data.transforms import build_eval_uint8_transform
from fba.model.text import tokenize

CONTEXT_LENGTH = 77
MAX_CAPTION_BYTES = 4096
IMAGE_INPUTS = ("images", "image_bytes")
TEXT_INPUTS = ("fg_text", "bg_text")
TOKEN_INPUTS = ("fg_tokens", "bg_tokens")


class RequestError(ValueError):
    """A request the server refuses; ``reason`` is the metric label it is counted under."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_rows: int  # images per request: the server's --max-batch
    max_pixels: int = 4096 * 4096  # of one encoded image, checked from its header before it is decoded
    vocabulary: int = 49408  # CLIP BPE ids are below this


@dataclass
class Rows:
    """A checked request: uint8 images [n, 3, H, W] and, for the full feature, token ids [n, 77] of each caption."""

    images: torch.Tensor
    fg_tokens: torch.Tensor | None = None
    bg_tokens: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)


def decode_image(blob: bytes, size: tuple[int, int], max_pixels: int, row: int) -> torch.Tensor:
    """An encoded image as uint8 [3, H, W] at ``size``, as ``fba embed`` reads a file."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise RequestError(f"image_bytes[{row}]: {width}x{height} pixels is over the server's limit of "
                                   f"{max_pixels}", "too_large")
            rgb = image.convert("RGB")
    except RequestError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        kind = "not an image" if isinstance(err, Image.UnidentifiedImageError) else f"cannot be decoded ({err})"
        raise RequestError(f"image_bytes[{row}]: {len(blob)} bytes, {kind}", "decode") from None
    return build_eval_uint8_transform(*size)(rgb)


def _images(inputs: Mapping[str, np.ndarray], size: tuple[int, int], limits: Limits) -> torch.Tensor:
    given = [name for name in IMAGE_INPUTS if name in inputs]
    if len(given) != 1:
        raise RequestError("give the images as exactly one of images (uint8 [N, 3, H, W]) or image_bytes "
                           f"(encoded files), not {' and '.join(given) or 'neither'}", "inputs")
    array = inputs[given[0]]
    rows = len(array) if array.ndim else 0
    if rows == 0:
        raise RequestError(f"{given[0]} holds no image: an empty batch", "empty")
    if rows > limits.max_rows:
        raise RequestError(f"{given[0]} holds {rows} images, over the server's --max-batch {limits.max_rows}", "shape")
    if given[0] == "images":
        expected = (3, *size)
        if array.dtype != np.uint8:
            raise RequestError(f"images must be uint8 RGB pixels, got {array.dtype}", "dtype")
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise RequestError(f"images must be [N, 3, {size[0]}, {size[1]}] (resized to the model's size), got "
                               f"{list(array.shape)}", "shape")
        return torch.from_numpy(np.ascontiguousarray(array))
    blobs = array.reshape(-1)
    if len(blobs) != rows:
        raise RequestError(f"image_bytes must be [N] or [N, 1] encoded files, got {list(array.shape)}", "shape")
    return torch.stack([decode_image(_as_bytes(blob), size, limits.max_pixels, i) for i, blob in enumerate(blobs)])


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _caption_tokens(name: str, values: np.ndarray, rows: int) -> torch.Tensor:
    texts = values.reshape(-1)
    if len(texts) != rows:
        raise RequestError(f"{name} holds {len(texts)} captions for {rows} images", "captions")
    captions = []
    for i, value in enumerate(texts):
        raw = _as_bytes(value)
        if len(raw) > MAX_CAPTION_BYTES:
            raise RequestError(f"{name}[{i}] is {len(raw)} bytes, over {MAX_CAPTION_BYTES}", "captions")
        try:
            captions.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(f"{name}[{i}] is not UTF-8 text", "captions") from None
    tokens = tokenize(captions, context_length=CONTEXT_LENGTH + 1)
    too_long = [i for i in range(rows) if tokens[i, -1] != 0]
    if too_long:
        raise RequestError(f"{name}[{too_long[0]}] is over {CONTEXT_LENGTH - 2} CLIP tokens (the text tower's "
                           "context); shorten it", "captions")
    return tokens[:, :CONTEXT_LENGTH].contiguous()


def _token_ids(name: str, values: np.ndarray, rows: int, limits: Limits) -> torch.Tensor:
    if values.dtype != np.int64:
        raise RequestError(f"{name} must be int64 CLIP token ids, got {values.dtype}", "dtype")
    if values.shape != (rows, CONTEXT_LENGTH):
        raise RequestError(f"{name} must be [{rows}, {CONTEXT_LENGTH}] for {rows} images, got {list(values.shape)}",
                           "shape")
    if values.min() < 0 or values.max() >= limits.vocabulary:
        raise RequestError(f"{name} holds ids outside CLIP's vocabulary [0, {limits.vocabulary})", "captions")
    return torch.from_numpy(np.ascontiguousarray(values))


def read_request(inputs: Mapping[str, np.ndarray], feature: str, size: tuple[int, int], limits: Limits) -> Rows:
    """The checked model inputs of one request (its inputs by name, as numpy arrays)."""
    images = _images(inputs, size, limits)
    given_text = [name for name in TEXT_INPUTS + TOKEN_INPUTS if name in inputs]
    if feature == "image":
        if given_text:
            raise RequestError(f"this model gives the image-only feature and takes no captions ({', '.join(given_text)} "
                               "given); serve a model exported with --feature full for the full feature", "feature")
        return Rows(images)
    if set(given_text) == set(TEXT_INPUTS):
        return Rows(images, *(_caption_tokens(name, inputs[name], len(images)) for name in TEXT_INPUTS))
    if set(given_text) == set(TOKEN_INPUTS):
        return Rows(images, *(_token_ids(name, inputs[name], len(images), limits) for name in TOKEN_INPUTS))
    raise RequestError("the full feature needs both captions, as fg_text and bg_text or as fg_tokens and bg_tokens "
                       f"(given: {', '.join(given_text) or 'none'})", "captions")
