"""Low-latency embedding: uint8 images normalised on the device, one CUDA graph per batch bucket, pinned buffers.

Batch-1 embedding was launch-bound (docs/performance.md: batch 1 and batch 32 took the same 10 ms): the GPU
waited for Python to launch several hundred small kernels. :class:`FastEmbedder` removes the launches and the
bytes:

- **uint8 in.** Images may come as uint8 [B,3,H,W] (what a JPEG decodes to): they cross PCIe at 1 byte a
  channel (4x fewer than fp32) and are scaled and CLIP-normalised on the device; float images are taken as
  already normalised.
- **Buckets.** For each batch size of ``batches`` (and input kind), ``FBA.extract`` runs on static buffers: a
  short batch is padded up to the nearest bucket by repeating its last row (eval mode: rows are independent, so
  padding never changes a real row's feature), a long one is cut into chunks of the largest bucket.
- **CUDA graphs.** On CUDA each bucket's forward is captured once (after warm-up on a side stream) and replayed:
  one launch per call. Host buffers are pinned and reused; the features come back through a pinned buffer.
- **CPU.** The same buckets and buffers run eagerly (no capture, no pinning), so the padding logic is tested on
  the CPU; :func:`build_embedder` keeps the plain :class:`Embedder` on the CPU.

``compile`` puts ``extract`` through ``torch.compile`` (mode from ``embed.compile``) before capture.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from fba.model.compile_modes import maybe_compile, resolve_compile_mode
from fba.config import EmbedConfig
from fba.data.transforms import ClipNormalise
from fba.embed.embedder import Embedder
from fba.model.text import Text, TextFeatures

DEFAULT_BATCHES = (1, 8, 32, 256)


def bucket_for(n: int, batches: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` rows (the largest bucket when none does: the caller chunks)."""
    if n < 1:
        raise ValueError(f"a batch needs at least one image, got {n}")
    fitting = [b for b in sorted(batches) if b >= n]
    return fitting[0] if fitting else max(batches)


def plan(n: int, batches: Sequence[int]) -> list[tuple[int, int, int]]:
    """(start, stop, bucket) per call for ``n`` rows: full chunks of the largest bucket, then the rest padded up."""
    largest, chunks, start = max(batches), [], 0
    while start < n:
        stop = min(n, start + largest)
        chunks.append((start, stop, bucket_for(stop - start, batches)))
        start = stop
    return chunks


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with its last row repeated up to ``rows`` rows."""
    if len(t) == rows:
        return t
    return torch.cat([t, t[-1:].expand(rows - len(t), *t.shape[1:])])


def _text_tensors(text: tuple[Text, Text | None] | None) -> list[torch.Tensor]:
    if text is None:
        return []
    return [t for part in text if part is not None for t in (part if isinstance(part, TextFeatures) else (part,))]


def _rebuild_text(text: tuple[Text, Text | None] | None, tensors: list[torch.Tensor]):
    if text is None:
        return None
    it = iter(tensors)
    parts = []
    for part in text:
        if part is None:
            parts.append(None)
        elif isinstance(part, TextFeatures):
            parts.append(TextFeatures(next(it), next(it), next(it)))
        else:
            parts.append(next(it))
    return tuple(parts)


@dataclass
class _Bucket:
    """Static buffers of one (batch size, input kind), and its captured graph on CUDA."""

    images: torch.Tensor
    text: list[torch.Tensor]
    host_images: torch.Tensor | None = None
    host_out: torch.Tensor | None = None
    out: torch.Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None
    calls: int = field(default=0)


class FastEmbedder(Embedder):
    """:class:`Embedder` with bucketed static buffers, on-device normalisation and (CUDA) one graph per bucket."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batches: Sequence[int] = DEFAULT_BATCHES,
        compile: str | None = None,
        cuda_graphs: bool = True,
    ):
        super().__init__(model, device, dtype)
        if not batches or min(batches) < 1:
            raise ValueError(f"embed.graph_batches must be positive batch sizes, got {list(batches)}")
        self.batches = tuple(sorted(set(int(b) for b in batches)))
        self.cuda = self.device.type == "cuda"
        self.graphs = cuda_graphs and self.cuda
        self.extract: Callable = maybe_compile(model.extract, compile)
        self.clip_normalise = ClipNormalise().to(self.device)
        self._buckets: dict[tuple, _Bucket] = {}

    def _context(self):
        if self.autocast:  # the autocast weight cache cannot live across graph replays
            return torch.autocast(device_type=self.device.type, dtype=self.dtype, cache_enabled=False)
        return contextlib.nullcontext()

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = self.clip_normalise(images)
        return images.to(self.param_dtype)

    def _forward(self, bucket: _Bucket, text: tuple | None) -> torch.Tensor:
        with self._context():
            return self.extract(self._normalise(bucket.images), _rebuild_text(text, bucket.text))

    def _bucket(self, size: int, images: torch.Tensor, text: tuple | None) -> _Bucket:
        tensors = _text_tensors(text)
        key = (size, images.dtype, tuple(images.shape[1:]),
               tuple((t.dtype, tuple(t.shape[1:])) for t in tensors), None if text is None else
               tuple(type(p).__name__ for p in text))
        bucket = self._buckets.get(key)
        if bucket is None:
            shape = (size, *images.shape[1:])
            bucket = _Bucket(
                images=torch.zeros(shape, dtype=images.dtype, device=self.device),
                text=[torch.zeros((size, *t.shape[1:]), dtype=t.dtype, device=self.device) for t in tensors],
                host_images=torch.zeros(shape, dtype=images.dtype, pin_memory=True) if self.cuda else None,
            )
            self._buckets[key] = bucket
        return bucket

    def _capture(self, bucket: _Bucket, text: tuple | None) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compilation, autotuning and lazy initialisation happen outside the capture
                self._forward(bucket, text)
        torch.cuda.current_stream().wait_stream(stream)
        bucket.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(bucket.graph):
            bucket.out = self._forward(bucket, text)
        bucket.host_out = torch.empty(bucket.out.shape, dtype=torch.float32, pin_memory=True)

    def _run(self, images: torch.Tensor, text: tuple | None, size: int) -> torch.Tensor:
        n = len(images)
        bucket = self._bucket(size, images, text)
        if bucket.host_images is not None and images.device.type == "cpu":
            bucket.host_images.copy_(pad_rows(images, size))
            bucket.images.copy_(bucket.host_images, non_blocking=True)
        else:
            bucket.images.copy_(pad_rows(images.to(self.device), size))
        for static, t in zip(bucket.text, _text_tensors(text)):
            static.copy_(pad_rows(t, size), non_blocking=True)
        bucket.calls += 1
        if not self.graphs:
            return self._forward(bucket, text)[:n].float().cpu()
        if bucket.graph is None:
            self._capture(bucket, text)
        bucket.graph.replay()
        bucket.host_out.copy_(bucket.out, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return bucket.host_out[:n].clone()

    @torch.no_grad()
    def embed(self, images: torch.Tensor, captions: tuple | None = None) -> torch.Tensor:
        """Features [B, D] float32 on the CPU of uint8 images [B,3,H,W] (0-255, normalised here) or of normalised
        float images; ``captions`` as :meth:`Embedder.embed` takes them."""
        was_training = self.model.training
        self.model.eval()
        try:
            text = None
            if captions is not None and self.uses_captions:
                text = tuple(None if t is None else self._prepare_text(t) for t in captions)
            parts = []
            for start, stop, size in plan(len(images), self.batches):
                part_text = None if text is None else tuple(
                    None if t is None else (t.select(slice(start, stop)) if isinstance(t, TextFeatures)
                                            else t[start:stop]) for t in text)
                parts.append(self._run(images[start:stop], part_text, size))
        finally:
            self.model.train(was_training)
        return torch.cat(parts)

    def captured(self) -> list[int]:
        """Batch sizes with a captured graph (for tests and benchmarks)."""
        return sorted(b.images.shape[0] for b in self._buckets.values() if b.graph is not None)


def build_embedder(model: nn.Module, device: torch.device, cfg=None) -> Embedder:
    """The embedder ``fba embed`` uses: :class:`FastEmbedder` on CUDA (graphs and compile per ``cfg``, an
    ``EmbedConfig``), the plain :class:`Embedder` on the CPU unless ``cfg.compile`` asks for a compile mode."""
    cfg = cfg or EmbedConfig()
    mode = resolve_compile_mode(cfg.compile, device, "embed.compile")
    if device.type != "cuda" and mode is None:
        return Embedder(model, device)
    return FastEmbedder(model, device, batches=cfg.graph_batches, compile=mode, cuda_graphs=cfg.cuda_graphs)
