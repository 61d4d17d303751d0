"""The graph that `fba export` writes: uint8 images (and caption token ids) in, the retrieval feature out.

:class:`ExportedEmbedder` wraps a loaded :class:`fba.model.FBA` so that a deployed model needs nothing from this
package: the CLIP normalisation runs inside the graph (``x / 255``, then ``(x - mean) / std``, exactly the
``ToTensor`` + ``Normalize`` of ``fba embed``; for ImageNet-normalised input it is folded into the patch
embedding), and with the full feature the frozen CLIP text tower runs inside
it too, on CLIP BPE token ids; :class:`ExportedStatesEmbedder` takes the tower's outputs instead, the tower
exported alone (:class:`ExportedTextTower`) for callers that reuse captions (docs/deployment.md, "Captions as
token ids, or as the text tower's outputs"). Resizing stays with the caller: it depends
on the decoder, and the contract is "an H x W RGB crop, bicubic-resized as PIL does".
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from fba.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ClipNormalise
from fba.model.text import TextFeatures

FEATURES = ("image", "full")
# How the full feature's graph takes the captions: "tokens" CLIP BPE ids, the frozen text tower in the graph;
# "states" the tower's outputs (hidden states and EOT positions), the tower exported alone beside it, so a caller
# runs it once per caption and the image graph once per image (a tracker: one caption per track, every frame).
CAPTION_INPUTS = ("tokens", "states")
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
# What the images input holds: "none" raw 0..255 pixels (uint8 or float32) normalised in the graph; "imagenet"
# float32 (x / 255 - ImageNet mean) / ImageNet std, what boxmot and torchreid feed; "clip" float32 already
# normalised as the model was trained.
INPUT_NORMS = ("none", "imagenet", "clip")


def graph_images(pixels: torch.Tensor, input_dtype: str, input_norm: str) -> torch.Tensor:
    """uint8 RGB pixels [N, 3, H, W] as an export with ``input_dtype`` / ``input_norm`` takes them: cast, or
    normalised as a tracker would (the one copy, for the runtimes and for calibration)."""
    if input_norm == "none":
        return pixels.to(INPUT_DTYPES[input_dtype])
    if input_norm == "clip":
        return ClipNormalise()(pixels)
    shape = (1, 3, 1, 1)
    return (pixels.float() / 255 - torch.tensor(IMAGENET_MEAN).view(shape)) / torch.tensor(IMAGENET_STD).view(shape)


def fold_input_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """A copy of ``conv`` that takes ``x`` and gives what ``conv`` gives on ``scale * x + shift`` (per input
    channel): the weights scaled per input channel, the shift summed through the kernel into the bias. Exact for
    a convolution without padding (every window sees real pixels), as the ViT patch embedding is."""
    if conv.padding not in ((0, 0), 0, "valid"):
        raise ValueError(f"cannot fold an input affine into a padded convolution ({conv.padding})")
    folded = copy.deepcopy(conv)
    weight = conv.weight.detach().double()
    shift_term = (weight * shift.double().view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    bias = shift_term if conv.bias is None else conv.bias.detach().double() + shift_term
    folded.weight = nn.Parameter((weight * scale.double().view(1, -1, 1, 1)).to(conv.weight.dtype))
    folded.bias = nn.Parameter(bias.to(conv.weight.dtype))
    return folded


def imagenet_to_clip() -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel ``(scale, shift)`` with ``clip = scale * imagenet + shift`` for the same pixels."""
    clip_mean, clip_std = torch.tensor(CLIP_MEAN, dtype=torch.float64), torch.tensor(CLIP_STD, dtype=torch.float64)
    mean, std = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
    return std / clip_std, (mean - clip_mean) / clip_std


class ExportedEmbedder(nn.Module):
    """``forward(images[, fg_tokens, bg_tokens]) -> features``.

    ``images`` [N, 3, H, W] RGB: uint8 or float32 0..255 pixels (``input_norm="none"``), or float32 already
    normalised the ImageNet way (``"imagenet"``: torchvision-style trackers) or the CLIP way (``"clip"``);
    ``fg_tokens`` / ``bg_tokens`` [N, 77] int64 CLIP BPE ids of the two captions (full feature only).
    The output is ``FBA.extract``'s: [N, D] image-only, [N, 3D] full, each part L2-normalised.
    """

    def __init__(self, model: nn.Module, feature: str, input_norm: str = "none"):
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if feature == "full" and model.cross_modal is None:
            raise ValueError("the baseline model (model.cross_modal=false) has no full feature; export --feature image")
        if input_norm == "imagenet":  # ImageNet to CLIP is an affine per channel: folded, it costs nothing
            model = copy.deepcopy(model)
            visual = model.backbone.visual
            visual.conv1 = fold_input_affine(visual.conv1, *imagenet_to_clip())
        self.model = model
        self.feature = feature
        self.input_norm = input_norm
        self.normalise = ClipNormalise() if input_norm == "none" else nn.Identity()

    def forward(self, images: torch.Tensor, fg_tokens: torch.Tensor | None = None,
                bg_tokens: torch.Tensor | None = None) -> torch.Tensor:
        x = self.normalise(images.float())
        if self.feature == "image":
            return self.model.extract(x)
        return self.model.extract(x, (fg_tokens, bg_tokens))


class ExportedStatesEmbedder(ExportedEmbedder):
    """``forward(images, fg_states, fg_eot, bg_states, bg_eot) -> features``: the full feature with the captions
    as the frozen tower's outputs (``states`` [N, 77, E] float32, ``eot`` [N] int64, what
    :class:`ExportedTextTower` gives), so the graph holds no text tower."""

    def __init__(self, model: nn.Module, input_norm: str = "none"):
        super().__init__(model, "full", input_norm)

    def forward(self, images: torch.Tensor, fg_states: torch.Tensor, fg_eot: torch.Tensor, bg_states: torch.Tensor,
                bg_eot: torch.Tensor) -> torch.Tensor:
        captions = (TextFeatures.from_eot(fg_states, fg_eot), TextFeatures.from_eot(bg_states, bg_eot))
        return self.model.extract(self.normalise(images.float()), captions)


class ExportedTextTower(nn.Module):
    """``forward(tokens) -> (states, eot)``: the frozen CLIP text tower alone, for a states export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.text_encoder = model.text_encoder

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text_encoder(tokens)
        return text.states, text.eot
