"""Features files: what ``fba embed`` writes and ``fba eval --features`` reads.

Two formats, chosen by the suffix: ``.safetensors`` (tensors, plus the paths, splits and free-form ``meta`` as
JSON in the header metadata) and ``.npz`` (plain NumPy arrays, strings as unicode arrays, ``meta`` as a JSON
string; readable without pickle). Files are written to a temporary file beside the target and moved into place,
so a crash never leaves half a file under the final name.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as save_safetensors

from fba.utils.atomic import atomic_write_bytes
from fba.errors import InputError
from fba.retrieval.metrics import as_numpy

FORMAT_VERSION = 1
SUFFIXES = (".safetensors", ".npz")
_METADATA_KEY = "fba_features"
_MADV_DONTNEED = 4
_libc = None
CHECK_ROWS = 65536  # rows checked at a time: a bounded temporary whatever the file's size


class FeaturesFileError(InputError):
    """A features file that cannot be read or holds inconsistent fields; the message names the file."""


@dataclass
class FeatureSet:
    """Rows of features with what is known about each image (``None`` where unknown)."""

    features: np.ndarray
    paths: list[str]
    pids: np.ndarray | None = None
    camids: np.ndarray | None = None
    split: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.features)

    def select(self, split: str) -> FeatureSet:
        """The rows of one split ("query", "gallery", ...), in file order."""
        if self.split is None:
            raise ValueError("this feature set has no split column")
        rows = np.array([s == split for s in self.split], dtype=bool)
        picked = np.flatnonzero(rows)
        contiguous = len(picked) > 0 and picked[-1] - picked[0] + 1 == len(picked)
        return FeatureSet(
            # one run of rows is a view (of a memory-mapped file, too: docs/retrieval.md), not a copy
            features=self.features[picked[0]:picked[-1] + 1] if contiguous else self.features[rows],
            paths=[p for p, keep in zip(self.paths, rows) if keep],
            pids=None if self.pids is None else self.pids[rows],
            camids=None if self.camids is None else self.camids[rows],
            split=[split] * int(rows.sum()),
            meta=dict(self.meta),
        )


def _validate(source: str, fs: FeatureSet) -> FeatureSet:
    if fs.features.ndim != 2 or 0 in fs.features.shape:
        raise FeaturesFileError(f"{source}: features must be 2-D [N, D] with N, D >= 1, got shape {fs.features.shape}")
    num = len(fs.features)
    columns = {"paths": fs.paths, "pids": fs.pids, "camids": fs.camids, "split": fs.split}
    for name, column in columns.items():
        if column is not None and len(column) != num:
            raise FeaturesFileError(f"{source}: {name} has {len(column)} entries but there are {num} feature rows")
    for name in ("pids", "camids"):
        column = columns[name]
        if column is not None and (column.ndim != 1 or not np.issubdtype(column.dtype, np.integer)):
            raise FeaturesFileError(f"{source}: {name} must be a 1-D integer array, got {column.dtype} {column.shape}")
    if not isinstance(fs.meta, dict):
        raise FeaturesFileError(f"{source}: meta must be a JSON object, got {type(fs.meta).__name__}")
    return fs


def release_pages(array: np.memmap, start: int, stop: int) -> None:
    """``madvise(DONTNEED)`` over the file pages of rows ``start:stop`` of a shared (read-only or r+) memory map:
    the data stays in the page cache, but no longer counts in this process's resident set."""
    global _libc
    if array.mode not in ("r", "r+") or stop <= start or not array.flags.c_contiguous:
        return
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    row_bytes = array.strides[0]
    begin = array.ctypes.data + start * row_bytes
    end = begin + (stop - start) * row_bytes
    page = mmap.PAGESIZE
    aligned = begin - begin % page
    _libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(end - aligned), _MADV_DONTNEED)


def _check_values(source: str, fs: FeatureSet) -> FeatureSet:
    """Features that can be compared: floating point, finite, no all-zero row (cosine would score it anyway)."""
    if not np.issubdtype(fs.features.dtype, np.floating):
        raise FeaturesFileError(f"{source}: features must be floating point, got {fs.features.dtype}")
    bad, zero = [], []
    for start in range(0, len(fs.features), CHECK_ROWS):
        block = fs.features[start:start + CHECK_ROWS]
        bad.append(start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
        zero.append(start + np.flatnonzero(~block.any(axis=1)))
        if isinstance(fs.features, np.memmap):
            release_pages(fs.features, start, start + len(block))
    bad, zero = np.concatenate(bad), np.concatenate(zero)
    if len(bad):
        raise FeaturesFileError(f"{source}: {len(bad)} feature rows hold NaN or infinity (first: row {int(bad[0])})")
    if len(zero):
        raise FeaturesFileError(f"{source}: {len(zero)} feature rows are all zero (first: row "
                                f"{int(zero[0])}); a zero vector has no direction to compare")
    return fs


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: features files end in {' or '.join(SUFFIXES)}, got {suffix or 'no suffix'!r}")
    return suffix


def save_features(
    path: str | os.PathLike,
    features: Any,
    paths: Sequence[str],
    pids: Any = None,
    camids: Any = None,
    split: Sequence[str] | None = None,
    meta: dict | None = None,
) -> Path:
    """Write a features file atomically; the format follows the suffix. Returns the path written."""
    path = Path(path)
    suffix = _check_suffix(path)
    fs = _validate(
        str(path),
        FeatureSet(
            features=np.ascontiguousarray(as_numpy(features), dtype=np.float32),
            paths=[str(p) for p in paths],
            pids=None if pids is None else np.ascontiguousarray(as_numpy(pids), dtype=np.int64),
            camids=None if camids is None else np.ascontiguousarray(as_numpy(camids), dtype=np.int64),
            split=None if split is None else [str(s) for s in split],
            meta=dict(meta or {}),
        ),
    )
    return atomic_write_bytes(path, _encode_safetensors(fs) if suffix == ".safetensors" else _encode_npz(fs))


def save_feature_set(path: str | os.PathLike, fs: FeatureSet) -> Path:
    """:func:`save_features` of every column of ``fs``."""
    return save_features(path, fs.features, fs.paths, fs.pids, fs.camids, fs.split, fs.meta)


def _encode_safetensors(fs: FeatureSet) -> bytes:
    tensors = {"features": fs.features}
    for name in ("pids", "camids"):
        if getattr(fs, name) is not None:
            tensors[name] = getattr(fs, name)
    header = {"version": FORMAT_VERSION, "paths": fs.paths, "split": fs.split, "meta": fs.meta}
    return save_safetensors(tensors, metadata={_METADATA_KEY: json.dumps(header)})


def _encode_npz(fs: FeatureSet) -> bytes:
    arrays = {
        "version": np.array(FORMAT_VERSION),
        "features": fs.features,
        "paths": np.array(fs.paths, dtype=str),
        "meta": np.array(json.dumps(fs.meta)),
    }
    for name in ("pids", "camids"):
        if getattr(fs, name) is not None:
            arrays[name] = getattr(fs, name)
    if fs.split is not None:
        arrays["split"] = np.array(fs.split, dtype=str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_features(path: str | os.PathLike, mmap: bool = False) -> FeatureSet:
    """Read a features file written by :func:`save_features`; a malformed file raises FeaturesFileError.

    ``mmap``: the features of a ``.safetensors`` file are memory-mapped (read-only) instead of read, so a
    gallery larger than memory can be evaluated in blocks (docs/retrieval.md); ``.npz`` files are always read.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: features file not found")
    try:
        fs = _decode_safetensors(path, mmap) if suffix == ".safetensors" else _decode_npz(path)
    except FeaturesFileError:
        raise
    except Exception as error:  # safetensors, zipfile, numpy and json each raise their own kinds
        raise FeaturesFileError(f"{path}: not a valid features file ({type(error).__name__}: {error})") from error
    return _check_values(str(path), _validate(str(path), fs))


def _check_version(path: Path, version: int | None) -> None:
    """A file from a newer fba (or none) is refused by name rather than misread."""
    if version != FORMAT_VERSION:
        raise FeaturesFileError(f"{path}: features format version {version}, this fba reads {FORMAT_VERSION}")


def _memmap_tensor(path: Path, name: str) -> np.ndarray:
    """A tensor of a safetensors file as a read-only ``np.memmap``: the format is an 8-byte header length, a
    JSON header giving each tensor's dtype, shape and byte range, then the raw little-endian data."""
    with path.open("rb") as handle:
        (header_len,) = np.frombuffer(handle.read(8), dtype="<u8")
        header = json.loads(handle.read(int(header_len)))
    entry = header[name]
    dtype = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}[entry["dtype"]]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise FeaturesFileError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape}")
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + int(header_len) + begin, shape=shape)


def _decode_safetensors(path: Path, mmap: bool = False) -> FeatureSet:
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if _METADATA_KEY not in metadata:
            raise FeaturesFileError(f"{path}: safetensors file without the '{_METADATA_KEY}' metadata entry")
        tensors = {name: _memmap_tensor(path, name) if mmap and name == "features" else handle.get_tensor(name)
                   for name in handle.keys()}
    header = json.loads(metadata[_METADATA_KEY])
    _check_version(path, header.get("version"))
    if "features" not in tensors:
        raise FeaturesFileError(f"{path}: no 'features' tensor (found {sorted(tensors)})")
    return FeatureSet(
        features=tensors["features"],
        paths=list(header["paths"]),
        pids=tensors.get("pids"),
        camids=tensors.get("camids"),
        split=header.get("split"),
        meta=header.get("meta") or {},
    )


def _decode_npz(path: Path) -> FeatureSet:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    for name in ("features", "paths"):
        if name not in arrays:
            raise FeaturesFileError(f"{path}: no '{name}' array (found {sorted(arrays)})")
    _check_version(path, int(arrays["version"]) if "version" in arrays else None)
    split = arrays.get("split")
    return FeatureSet(
        features=arrays["features"],
        paths=[str(p) for p in arrays["paths"]],
        pids=arrays.get("pids"),
        camids=arrays.get("camids"),
        split=None if split is None else [str(s) for s in split],
        meta=json.loads(str(arrays["meta"])) if "meta" in arrays else {},
    )
