"""Feature rows read block by block, and the distances of one block of query rows against one of gallery rows.

A feature source is anything with ``shape == (N, D)`` whose slices ``source[a:b]`` give rows: a NumPy array, an
``np.memmap``, a torch tensor (on any device), or an object that makes its rows on demand (a seeded generator, a
reader of a large file). Pages of a read-only memory map are handed back to the kernel once a block is copied
out, so a gallery larger than memory is streamed without its pages piling up in the process's resident set.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from typing import Any

import numpy as np
import torch

METRICS = ("euclidean", "cosine")
_MADV_DONTNEED = 4
_libc = None


def num_rows(source: Any) -> int:
    return int(source.shape[0])


def check_source(name: str, source: Any, dim: int | None = None) -> int:
    """The feature dimension of ``source``, after checking it is [N, D] (and D == ``dim`` when given)."""
    shape = tuple(getattr(source, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"{name} must be [N, D] features, got shape {shape}")
    if dim is not None and shape[1] != dim:
        raise ValueError(f"features must be [N, D] with the same D, got {dim} and {name} {shape}")
    return int(shape[1])


def _release(array: np.memmap, start: int, stop: int) -> None:
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


def read_rows(source: Any, start: int, stop: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of ``source`` as a floating-point tensor on ``device`` (default: the source's own
    device for a tensor, else the CPU); bf16/fp16 become float32."""
    if torch.is_tensor(source):
        rows = source[start:stop].detach()
    else:
        block = np.asarray(source[start:stop])
        rows = torch.from_numpy(np.array(block) if isinstance(source, np.memmap) or not block.flags.writeable else block)
        if isinstance(source, np.memmap):
            _release(source, start, stop)
    if not rows.is_floating_point() or rows.element_size() < 4:
        rows = rows.float()
    return rows if device is None else rows.to(device)


def source_device(*sources: Any) -> torch.device:
    """Where the arithmetic runs: the device of the first tensor source, else the CPU."""
    for source in sources:
        if torch.is_tensor(source):
            return source.device
    return torch.device("cpu")


def output_dtype(*sources: Any) -> torch.dtype:
    """float64 when every source holds float64 (as :func:`fba.metrics.pairwise_distance`), else float32."""
    def is_double(source: Any) -> bool:
        dtype = getattr(source, "dtype", None)  # rows made on demand need not say
        if torch.is_tensor(source):
            return dtype == torch.float64
        return dtype is not None and np.dtype(dtype) == np.float64

    return torch.float64 if all(is_double(s) for s in sources) else torch.float32


def prepare(rows: torch.Tensor, metric: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows in the compute dtype, unit length for cosine; for euclidean also their squared norms."""
    rows = rows.to(dtype)
    if metric == "cosine":
        return torch.nn.functional.normalize(rows, dim=1), None
    return rows, (rows * rows).sum(1)


def block_distance(
    q: tuple[torch.Tensor, torch.Tensor | None], g: tuple[torch.Tensor, torch.Tensor | None], metric: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Distances [n, m] between prepared query rows and prepared gallery rows, the same arithmetic as
    :func:`fba.metrics.pairwise_distance` (``|q|^2 + |g|^2 - 2 q.g`` clamped then rooted, or ``1 - cos``)."""
    (q_rows, q_sq), (g_rows, g_sq) = q, g
    dot = q_rows @ g_rows.T
    if metric == "cosine":
        return dot.neg_().add_(1.0).to(out_dtype)  # 1 - cos, in place: the same rounding as ``1.0 - dot``
    return (q_sq[:, None] + g_sq - 2.0 * dot).clamp_min_(0.0).sqrt_().to(out_dtype)


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' (as the in-memory path) or 'float32', got {precision!r}")
    return torch.float64 if precision == "float64" else torch.float32


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
