"""The graph that `fba export` writes: uint8 images (and caption token ids) in, the retrieval feature out.

:class:`ExportedEmbedder` wraps a loaded :class:`fba.model.FBA` so that a deployed model needs nothing from this
package: the CLIP normalisation runs inside the graph (``x / 255``, then ``(x - mean) / std``, exactly the
``ToTensor`` + ``Normalize`` of ``fba embed``), and with the full feature the frozen CLIP text tower runs inside
it too, on CLIP BPE token ids (docs/deployment.md, "Why token ids"). Resizing stays with the caller: it depends
on the decoder, and the contract is "an H x W RGB crop, bicubic-resized as PIL does".
"""
from __future__ import annotations

import torch
from torch import nn

from fba.data.transforms import ClipNormalise

FEATURES = ("image", "full")
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


class ExportedEmbedder(nn.Module):
    """``forward(images[, fg_tokens, bg_tokens]) -> features``.

    ``images`` [N, 3, H, W] RGB, uint8 (or float32 holding 0..255 for runtimes that only feed float inputs);
    ``fg_tokens`` / ``bg_tokens`` [N, 77] int64 CLIP BPE ids of the two captions (full feature only).
    The output is ``FBA.extract``'s: [N, D] image-only, [N, 3D] full, each part L2-normalised.
    """

    def __init__(self, model: nn.Module, feature: str):
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        if feature == "full" and model.cross_modal is None:
            raise ValueError("the baseline model (model.cross_modal=false) has no full feature; export --feature image")
        self.model = model
        self.feature = feature
        self.normalise = ClipNormalise()

    def forward(self, images: torch.Tensor, fg_tokens: torch.Tensor | None = None,
                bg_tokens: torch.Tensor | None = None) -> torch.Tensor:
        x = self.normalise(images)
        if self.feature == "image":
            return self.model.extract(x)
        return self.model.extract(x, (fg_tokens, bg_tokens))
