"""Retrieval features of images (docs/design.md#retrieval-feature): the reusable :class:`Embedder`.

``Embedder(model, device, dtype)`` runs ``FBA.extract`` in eval mode on batches: with captions the full
feature (post-BN CLS, F_f^V, F_f^T), without them the image-only one (post-BN CLS). The trainer's periodic
evaluation, ``fba eval --checkpoint`` (both through :mod:`fba.retrieval.eval_set`) and ``fba embed``
(:mod:`fba.embed.command`) use the same object, so a model is always measured the same way.
:mod:`fba.embed.fast` builds on it for CUDA.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from fba.embed.text_bank import TextBank, text_inputs
from fba.model.text import Text, TextFeatures


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it (the features are L2-normalised, bf16 moves them by ~1e-2), fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class Embedder:
    """Batched ``FBA.extract``; returns float32 features on the CPU."""

    def __init__(self, model: nn.Module, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype or default_dtype(self.device)
        self.param_dtype = next(model.parameters()).dtype
        # Weights kept in fp32 compute in a lower dtype through autocast; weights already in that dtype
        # (a bf16 DeepSpeed module) take inputs of their own dtype.
        self.autocast = self.dtype != self.param_dtype and self.dtype != torch.float32

    @property
    def uses_captions(self) -> bool:
        return getattr(self.model, "cross_modal", None) is not None

    def _context(self):
        if self.autocast:
            return torch.autocast(device_type=self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def _prepare_text(self, text: Text | Sequence[str]) -> Text:
        if isinstance(text, TextFeatures):
            return TextFeatures(text.states.to(self.device, self.param_dtype), text.valid.to(self.device), text.eot.to(self.device))
        if isinstance(text, torch.Tensor):
            return text.to(self.device)
        return self._prepare_text(text_inputs(self.model, text))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, captions: tuple | None = None) -> torch.Tensor:
        """Features [B, D] of normalised ``images`` [B, 3, H, W]; ``captions`` = (fg, bg) as strings, token ids
        or TextFeatures, or None for the image-only feature."""
        was_training = self.model.training
        self.model.eval()
        try:
            images = images.to(self.device, self.param_dtype, non_blocking=True)
            text = None
            if captions is not None and self.uses_captions:
                text = tuple(self._prepare_text(t) for t in captions)
            with self._context():
                features = self.model.extract(images, text)
        finally:
            self.model.train(was_training)
        return features.float().cpu()

    def embed_loader(
        self, loader: Iterable[dict], bank: TextBank | None = None, total: int | None = None, desc: str = "embed",
        progress: bool = True,
    ) -> torch.Tensor:
        """Features of every item of an evaluation loader, row ``i`` = item ``i`` (placed by the batch's ``index``)."""
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True, leave=False)
        for batch in loader:
            index = batch["index"]
            captions = bank.select(index, self.param_dtype) if bank is not None else None
            rows.append((index.cpu(), self.embed(batch["images"], captions)))
            bar.update(len(index))
        bar.close()
        if not rows:
            raise ValueError("the loader gave no images to embed")
        index = torch.cat([i for i, _ in rows])
        features = torch.cat([f for _, f in rows])
        if not torch.equal(torch.sort(index).values, torch.arange(len(index))):
            raise ValueError("the loader's batch indices do not cover the items exactly once")
        out = torch.empty_like(features)
        out[index] = features
        return out
