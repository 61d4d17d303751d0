"""Feature rows read block by block, and the distances of one block of query rows against one of gallery rows.

A feature source is anything with ``shape == (N, D)`` whose slices ``source[a:b]`` give rows: a NumPy array, an
``np.memmap``, a torch tensor (on any device), or an object that makes its rows on demand (a seeded generator, a
reader of a large file). Pages of a read-only memory map are handed back to the kernel once a block is copied
out, so a gallery larger than memory is streamed without its pages piling up in the process's resident set.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fba.retrieval.features_file import release_pages

METRICS = ("euclidean", "cosine")


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


def read_rows(source: Any, start: int, stop: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of ``source`` as a floating-point tensor on ``device`` (default: the source's own
    device for a tensor, else the CPU); bf16/fp16 become float32."""
    if torch.is_tensor(source):
        rows = source[start:stop].detach()
    else:
        block = np.asarray(source[start:stop])
        rows = torch.from_numpy(np.array(block) if isinstance(source, np.memmap) or not block.flags.writeable else block)
        if isinstance(source, np.memmap):
            release_pages(source, start, stop)
    if not rows.is_floating_point() or rows.element_size() < 4:
        rows = rows.float()
    return rows if device is None else rows.to(device)


def take_rows(source: Any, index: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """Rows at ``index`` (any order) as :func:`read_rows` gives them, for sources that allow fancy indexing
    (arrays, memory maps, tensors); other sources are read one row at a time."""
    if torch.is_tensor(source):
        rows = source[torch.from_numpy(index).to(source.device)].detach()
    elif isinstance(source, np.ndarray):
        rows = torch.from_numpy(np.array(source[index]))
    else:
        rows = torch.cat([read_rows(source, int(i), int(i) + 1) for i in index]) if len(index) else \
            torch.zeros((0, int(source.shape[1])))
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
    """float64 when every source holds float64 (as :func:`fba.retrieval.metrics.pairwise_distance`), else float32."""
    def is_double(source: Any) -> bool:
        dtype = getattr(source, "dtype", None)  # rows made on demand need not say
        if torch.is_tensor(source):
            return dtype == torch.float64
        return dtype is not None and np.dtype(dtype) == np.float64

    return torch.float64 if all(is_double(s) for s in sources) else torch.float32


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' (as the in-memory path) or 'float32', got {precision!r}")
    return torch.float64 if precision == "float64" else torch.float32


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
