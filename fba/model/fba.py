"""The FBA model: CLIP ViT backbone, frozen text tower, shared cross-modal module, BNNeck heads; and its factory.

Ablation switches (paper Table 3): ``cross_modal`` (off = the baseline: backbone CLS only, no text or
cross-modal module is even built), ``diversity`` (runs the bg branch for the diversity loss) and ``pooling``
(differential pooling of F_f^T, needs the bg branch's attention statistics). The bg branch only runs when
one of the last two needs it.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fba.config import ModelConfig

from .backbone import VisualBackbone, build_backbone, get_arch, load_clip_checkpoint
from .cross_modal import CrossModalModule, CrossModalOutput
from .heads import BNNeckHead
from .text import Text, TextEncoder, TextFeatureCache, TextFeatures

__all__ = ["FBA", "RETRIEVAL_FEATURES", "build_model", "select_feature"]

# The retrieval features (docs/model.md, "Retrieval feature"), as the parts of [post-BN CLS, F_f^V, F_f^T] they
# keep: "image" is what a model gives without captions, "text" the part that exists only because of the
# captions (both cross-modal features; each has also attended to the image), "full" both.
RETRIEVAL_FEATURES: dict[str, tuple[int, ...]] = {"full": (0, 1, 2), "image": (0,), "text": (1, 2)}


def select_feature(full: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``kind`` retrieval feature from full features [B, 3D] (each part already L2-normalised), so one
    embedding pass gives all three; ``select_feature(full, "image")`` equals ``extract`` without captions."""
    if kind not in RETRIEVAL_FEATURES:
        raise ValueError(f"unknown retrieval feature {kind!r}; choose from {', '.join(RETRIEVAL_FEATURES)}")
    if full.shape[-1] % 3:
        raise ValueError(f"full features have 3 equal parts, got width {full.shape[-1]}")
    parts = full.unflatten(-1, (3, -1))
    return parts[..., list(RETRIEVAL_FEATURES[kind]), :].flatten(-2)


class FBA(nn.Module):
    """``forward`` for training (features and logits for the losses), ``extract`` for retrieval."""

    def __init__(
        self,
        backbone: VisualBackbone,
        num_classes: int,
        text_encoder: TextEncoder | None = None,
        cross_modal: CrossModalModule | None = None,
        diversity: bool = False,
        text_cache: TextFeatureCache | None = None,
    ):
        super().__init__()
        if (text_encoder is None) != (cross_modal is None):
            raise ValueError("the text encoder and the cross-modal module come together")
        if diversity and cross_modal is None:
            raise ValueError("the diversity loss needs the cross-modal module")
        width = backbone.width
        self.backbone = backbone
        self.head = BNNeckHead(width, num_classes)
        self.text_encoder = text_encoder
        self.cross_modal = cross_modal
        self.diversity = diversity
        self.pooling = cross_modal is not None and cross_modal.pooling
        self.text_cache = text_cache
        if cross_modal is not None:
            self.head_fg_img = BNNeckHead(width, num_classes)
            self.head_fg_txt = BNNeckHead(width, num_classes)

    @property
    def width(self) -> int:
        return self.backbone.width

    @property
    def needs_bg(self) -> bool:
        return self.diversity or self.pooling

    def feature_dim(self, with_captions: bool, kind: str = "full") -> int:
        if not with_captions or self.cross_modal is None:
            return self.width
        return self.width * len(RETRIEVAL_FEATURES[kind])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything the optimiser updates: not the frozen text tower, not the BNNecks' frozen biases."""
        return [p for p in self.parameters() if p.requires_grad]

    def encode_captions(self, captions: Sequence[str], progress: bool = False) -> TextFeatures:
        """Frozen-tower features of caption strings, through the on-disk cache when ``model.text_cache`` is set."""
        if self.text_encoder is None:
            raise ValueError("the baseline model (model.cross_modal=false) has no text tower")
        if self.text_cache is not None:
            return self.text_cache.get_or_compute(captions, self.text_encoder, progress=progress)
        return self.text_encoder.encode(captions)

    def _text(self, text: Text | None, which: str) -> TextFeatures:
        if text is None:
            raise ValueError(f"this model needs the {which} captions (token ids or TextFeatures)")
        if isinstance(text, TextFeatures):
            return text
        return self.text_encoder(text)

    def _cross(self, tokens: torch.Tensor, fg: Text | None, bg: Text | None, with_bg: bool, **kwargs) -> CrossModalOutput:
        return self.cross_modal(tokens, self._text(fg, "fg"), self._text(bg, "bg") if with_bg else None, **kwargs)

    def forward(
        self,
        images: torch.Tensor,
        fg: Text | None = None,
        bg: Text | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training outputs; every feature is pre-BN (for the triplet losses), every ``*_logits`` post-BN.

        Keys: ``cls``, ``cls_logits`` always; with cross_modal ``fg_img``, ``fg_img_logits``, ``fg_txt``,
        ``fg_txt_logits``; with the bg branch (diversity or pooling) ``bg_img``, ``bg_txt``; with pooling
        ``pool_mask`` [B, M]. ``labels`` is accepted for the trainer's uniform call and not used (no
        identity-dependent embedding in FBA).
        """
        tokens = self.backbone(images)
        cls = tokens[:, 0]
        out = {"cls": cls, "cls_logits": self.head(cls)[1]}
        if self.cross_modal is None:
            return out
        cm = self._cross(tokens, fg, bg, self.needs_bg)
        out.update(
            fg_img=cm.fg_img,
            fg_img_logits=self.head_fg_img(cm.fg_img)[1],
            fg_txt=cm.fg_txt,
            fg_txt_logits=self.head_fg_txt(cm.fg_txt)[1],
        )
        if cm.bg_img is not None:
            out.update(bg_img=cm.bg_img, bg_txt=cm.bg_txt)
        if cm.pool_mask is not None:
            out["pool_mask"] = cm.pool_mask
        return out

    def extract(
        self, images: torch.Tensor, captions: tuple[Text, Text | None] | None = None, feature: str = "full"
    ) -> torch.Tensor:
        """Retrieval feature (docs/design.md#retrieval-feature, docs/model.md); call in eval mode (BatchNorm running statistics).

        With captions ``(fg, bg)``, ``feature`` "full": [post-BN CLS, post-BN F_f^V, post-BN F_f^T], each
        L2-normalised -> [B, 3D]; "text": the caption part [F_f^V, F_f^T] -> [B, 2D]; "image": post-BN CLS
        -> [B, D] (``bg`` is only needed with pooling on). Without captions, or for the baseline model which
        has no caption features: post-BN CLS, L2-normalised -> [B, D] ("text" is then an error).
        """
        if feature not in RETRIEVAL_FEATURES:
            raise ValueError(f"unknown retrieval feature {feature!r}; choose from {', '.join(RETRIEVAL_FEATURES)}")
        tokens = self.backbone(images)
        cls = F.normalize(self.head.bn(tokens[:, 0]), dim=-1)
        if feature == "image" or captions is None or self.cross_modal is None:
            if feature == "text":
                raise ValueError("the text feature needs captions and a model with the cross-modal module")
            return cls
        fg, bg = captions
        cm = self._cross(tokens, fg, bg, self.pooling)
        fg_img = F.normalize(self.head_fg_img.bn(cm.fg_img), dim=-1)
        fg_txt = F.normalize(self.head_fg_txt.bn(cm.fg_txt), dim=-1)
        return torch.cat([cls, fg_img, fg_txt] if feature == "full" else [fg_img, fg_txt], dim=-1)

    def attention_maps(self, images: torch.Tensor, fg: Text, bg: Text) -> tuple[torch.Tensor, torch.Tensor]:
        """Head-averaged image->caption attention of CA, (W_f, W_b) [B, 1 + N, M], image rows incl. CLS (Fig. 4)."""
        if self.cross_modal is None:
            raise ValueError("the baseline model (model.cross_modal=false) has no cross-attention maps")
        return self._cross(self.backbone(images), fg, bg, True, return_maps=True).maps


def build_model(cfg: ModelConfig, num_classes: int, image_size: tuple[int, int] = (384, 128)) -> FBA:
    """The one factory: ``cfg`` fields arch, pretrained, stride, cross_modal, diversity, pooling, pool_grad,
    cross_layers, text_cache, kernel, checked where the config is loaded (:func:`fba.config.validate`). Never
    downloads: ``pretrained`` is a local file or None (random init)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    arch = get_arch(cfg.arch)
    checkpoint = load_clip_checkpoint(cfg.pretrained) if cfg.pretrained else None
    if checkpoint is None:
        warnings.warn(f"model.pretrained is not set: the {arch.name} CLIP towers start from random weights", stacklevel=2)
    backbone = build_backbone(arch, tuple(image_size), cfg.stride, checkpoint)
    if not cfg.cross_modal:
        return FBA(backbone, num_classes)
    text_encoder = TextEncoder(arch, checkpoint)
    cross_modal = CrossModalModule(
        backbone.width, arch.vision.heads, arch.embed_dim, cfg.cross_layers, cfg.pooling, cfg.pool_grad, cfg.kernel
    )
    cache = TextFeatureCache(cfg.text_cache) if cfg.text_cache else None
    return FBA(backbone, num_classes, text_encoder, cross_modal, cfg.diversity, cache)
