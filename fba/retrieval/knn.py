"""Blockwise exact k-nearest neighbours over one set of feature rows (query and gallery together).

Every pair is computed once: block (I, J) of rows for J >= I updates the candidates of the rows of I and, through
its transpose, those of J. Each row keeps its ``k + margin`` smallest keys (``torch.topk``, whose choice among
equal keys is arbitrary) and its largest key. The final order is the stable one of
:func:`fba.retrieval.metrics._topk_stable` (by key, then by index) on a per-row monotone transform of the key (re-ranking
divides by the row's largest key); the margin makes the candidates provably complete unless ties or rounding
reach past them, and the rows where that happens are recomputed in full, exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fba.retrieval.metrics import _topk_stable
from fba.retrieval.rows import num_rows, read_rows, take_rows

KeyBlock = Callable[[Any, Any], torch.Tensor]  # (prepared rows a, prepared rows b) -> keys [a, b]
Prepare = Callable[[torch.Tensor], Any]
Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (keys [r, c], row maxima [r, 1]) -> order keys
MARGIN = 8


class JointRows:
    """Query rows then gallery rows, read as one source (slices and index arrays)."""

    def __init__(self, first: Any, second: Any):
        self.parts = (first, second)
        self.split = num_rows(first)
        self.shape = (self.split + num_rows(second), int(first.shape[1]))

    def rows(self, start: int, stop: int, device=None) -> torch.Tensor:
        first, second = self.parts
        pieces = []
        if start < self.split:
            pieces.append(read_rows(first, start, min(stop, self.split), device))
        if stop > self.split:
            pieces.append(read_rows(second, max(start, self.split) - self.split, stop - self.split, device))
        return pieces[0] if len(pieces) == 1 else torch.cat([p.to(pieces[0].dtype) for p in pieces])

    def take(self, index: np.ndarray, device=None) -> torch.Tensor:
        """Rows at ``index`` (any order), for the sources that allow fancy indexing (arrays, memmaps, tensors)."""
        first, second = self.parts
        out = None
        for part, mask, offset in ((first, index < self.split, 0), (second, index >= self.split, self.split)):
            if not mask.any():
                continue
            rows = take_rows(part, index[mask] - offset, device)
            if out is None:
                out = torch.empty((len(index), rows.shape[1]), dtype=rows.dtype, device=rows.device)
            out[torch.from_numpy(np.flatnonzero(mask)).to(rows.device)] = rows.to(out.dtype)
        return out


@dataclass
class Neighbours:
    """``index`` [N, k]: each row's k nearest rows in the stable order; ``row_max`` [N]: its largest key."""

    index: np.ndarray
    row_max: np.ndarray
    recomputed_rows: int


class BlockKnn:
    """The kNN pass over ``rows`` (a :class:`JointRows`) with ``key_block`` on prepared row blocks."""

    def __init__(self, rows: JointRows, prepare: Prepare, key_block: KeyBlock, block: int, device=None):
        self.rows, self.prepare, self.key_block, self.block = rows, prepare, key_block, block
        self.device = device
        self.num = rows.shape[0]
        self.starts = list(range(0, self.num, block))

    def _prepared(self, b: int):
        start = self.starts[b]
        return self.prepare(self.rows.rows(start, min(start + self.block, self.num), self.device))

    def run(self, k: int, transform: Transform, progress: bool = True, desc: str = "neighbours") -> Neighbours:
        num = self.num
        k = min(k, num)
        width = min(k + MARGIN, num)
        values = torch.full((num, width), torch.inf)
        index = torch.zeros((num, width), dtype=torch.int64)
        row_max = torch.full((num,), -torch.inf)
        total = num * (num + self.block) // 2
        with tqdm(total=total, unit="pair", unit_scale=True, desc=desc, disable=not progress, smoothing=0.1) as bar:
            for bi, start in enumerate(self.starts):
                stop = min(start + self.block, num)
                a = self._prepared(bi)
                for bj in range(bi, len(self.starts)):
                    c0 = self.starts[bj]
                    c1 = min(c0 + self.block, num)
                    b = a if bj == bi else self._prepared(bj)
                    keys = self.key_block(a, b).float().cpu()
                    self._merge(values, index, row_max, start, stop, keys, c0, width)
                    if bj != bi:
                        self._merge(values, index, row_max, c0, c1, keys.T, start, width)
                    bar.update((stop - start) * (c1 - c0))
        return self._finish(values, index, row_max, k, width, transform)

    @staticmethod
    def _merge(values, index, row_max, r0, r1, keys, c0, width) -> None:
        take = min(width, keys.shape[1])
        block_values, block_index = torch.topk(keys, take, dim=1, largest=False, sorted=False)
        merged_values = torch.cat([values[r0:r1], block_values], dim=1)
        merged_index = torch.cat([index[r0:r1], block_index + c0], dim=1)
        best_values, best = torch.topk(merged_values, width, dim=1, largest=False, sorted=False)
        values[r0:r1] = best_values
        index[r0:r1] = torch.gather(merged_index, 1, best)
        torch.maximum(row_max[r0:r1], keys.max(dim=1).values, out=row_max[r0:r1])

    def _finish(self, values, index, row_max, k, width, transform) -> Neighbours:
        order_keys = transform(values, row_max[:, None])
        by_index = torch.argsort(index, dim=1, stable=True)
        order_keys, index = torch.gather(order_keys, 1, by_index), torch.gather(index, 1, by_index)
        by_key = torch.argsort(order_keys, dim=1, stable=True)
        order_keys, index = torch.gather(order_keys, 1, by_key), torch.gather(index, 1, by_key)
        result = index[:, :k].numpy().copy()
        if width < self.num:
            # Every row left out has a key >= the largest candidate's: complete unless that one ties the k-th.
            doubtful = np.flatnonzero((order_keys[:, -1] <= order_keys[:, k - 1]).numpy())
            for b in sorted({int(r) // self.block for r in doubtful}):
                start = self.starts[b]
                stop = min(start + self.block, self.num)
                full = transform(self._full_rows(b), row_max[start:stop, None]).numpy()
                rows_here = doubtful[(doubtful >= start) & (doubtful < stop)]
                result[rows_here] = _topk_stable(full[rows_here - start], k)
        else:
            doubtful = []
        return Neighbours(result, row_max.numpy(), len(doubtful))

    def _full_rows(self, b: int) -> torch.Tensor:
        """Every key of the rows of block ``b``, from the very blocks the pass computed (so the same bits)."""
        a = self._prepared(b)
        pieces = []
        for bj in range(len(self.starts)):
            if bj >= b:
                pieces.append(self.key_block(a, a if bj == b else self._prepared(bj)).float().cpu())
            else:
                pieces.append(self.key_block(self._prepared(bj), a).float().cpu().T)
        return torch.cat(pieces, dim=1)
