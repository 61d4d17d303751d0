"""The dual-branch cross-modal module: one shared cross-attention block CA and one shared self-attention stack SA.

Four streams use the same weights: image->fg caption, image->bg caption, fg caption->image, bg caption->image.
They run as batched calls on a *packed* row tensor: all image rows of every branch, then all caption rows,
flattened to [R, D]. Every LayerNorm, projection and MLP is then one matmul over all four streams; only the
attention itself is split by sequence length (one call for the image streams, one for the caption streams).
The image is projected to Q and to K/V once and shared by both caption branches; fg and bg captions are
stacked on the batch axis (fg block first). All four attentions of CA go through
``fba.kernels.cross_modal_attention``; the SA stack uses SDPA.

Choices docs/design.md leaves to the implementation (also in docs/model.md):
- CA normalises queries and keys/values with separate LayerNorms (``ln_q``, ``ln_kv``), as open_clip's
  cross-attention block (``ln_1_kv``) does: the image and caption streams come from different encoders
  with different statistics, and in every stream the same token set is query in one direction and key in
  the other, so one LN per role keeps the roles apart while the weights stay shared.
- A final shared LayerNorm (``ln_post``) follows SA, as CLIP's towers end in one; the global features then
  have the scale of the backbone's CLS (after ``ln_post``), which the triplet margin of 0.3 assumes.
- New weights: truncated normal std 0.02, zero biases (TransReID/timm's ViT init).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fba import kernels
from fba.kernels import cross_attention

from .pooling import pool_from_stats
from .text import TextFeatures

__all__ = ["CrossAttentionBlock", "CrossModalModule", "CrossModalOutput", "SelfAttentionLayer"]


def _mlp(width: int, ratio: float = 4.0) -> nn.Sequential:
    hidden = int(width * ratio)
    return nn.Sequential(
        OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
    )


def _heads(rows: torch.Tensor, batch: int, length: int, heads: int) -> torch.Tensor:
    """[batch*length, heads*d] rows -> [batch, heads, length, d] (a view)."""
    return rows.view(batch, length, heads, -1).transpose(1, 2)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, length, d] -> [batch*length, heads*d]."""
    return x.transpose(1, 2).reshape(-1, x.shape[1] * x.shape[3])


class CrossAttentionBlock(nn.Module):
    """Pre-norm ``x = q + MHA(LN_q(q), LN_kv(kv), kv_mask); x = x + MLP(LN(x))``, both directions at once."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.kv_proj = nn.Linear(width, 2 * width)
        self.out_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = _mlp(width, mlp_ratio)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        text_valid: torch.Tensor,
        need_stats: bool = False,
        return_maps: bool = False,
        backend: str = "auto",
        pool_grad: bool = False,
    ):
        """image [B, L, D], text [nb*B, M, D] (fg block first), text_valid [nb*B, M] bool.

        Returns the packed rows [nb*B*L + nb*B*M, D] (image streams, then caption streams), the column stats
        [B, 3, M] when ``need_stats`` and the head-averaged image->caption maps (w_f, w_b) [B, L, M] when
        ``return_maps`` (both need nb = 2).
        """
        batch, length, width = image.shape
        text_batch, text_length = text.shape[:2]
        branches = text_batch // batch
        n_img = batch * length
        rows = torch.cat([image.reshape(-1, width), text.reshape(-1, width)])
        q = self.q_proj(self.ln_q(rows))
        k, v = self.kv_proj(self.ln_kv(rows)).chunk(2, dim=-1)
        h = self.heads
        q_img, k_img, v_img = (_heads(t[:n_img], batch, length, h) for t in (q, k, v))
        q_txt, k_txt, v_txt = (_heads(t[n_img:], text_batch, text_length, h) for t in (q, k, v))
        attn = kernels.cross_modal_attention(
            q_img, k_img, v_img, q_txt, k_txt, v_txt, text_valid,
            need_stats=need_stats, backend=backend, pool_grad=pool_grad,
        )
        maps = None
        if return_maps:
            if branches != 2:
                raise ValueError("attention maps need both caption branches (fg and bg)")
            *_, maps = cross_attention.reference(
                q_img, k_txt[:batch], v_txt[:batch], k_txt[batch:], v_txt[batch:],
                text_valid[:batch], text_valid[batch:], return_maps=True,
            )
        residual = torch.cat([image.repeat(branches, 1, 1).reshape(-1, width), text.reshape(-1, width)])
        x = residual + self.out_proj(torch.cat([_rows(attn.img), _rows(attn.txt)]))
        x = x + self.mlp(self.ln_2(x))
        return x, attn.stats, maps


class SelfAttentionLayer(nn.Module):
    """Pre-norm transformer layer over packed rows: image streams unmasked, caption streams key-padding masked."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = _mlp(width, mlp_ratio)

    def _attend(self, qkv: torch.Tensor, batch: int, length: int, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = qkv.view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return _rows(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def forward(self, rows: torch.Tensor, image_shape: tuple[int, int], text_shape: tuple[int, int], text_mask):
        """rows [nb*B*L + nb*B*M, D]; image_shape (nb*B, L); text_shape (nb*B, M); text_mask [nb*B, 1, 1, M]."""
        n_img = image_shape[0] * image_shape[1]
        qkv = self.qkv(self.ln_1(rows))
        attended = torch.cat([
            self._attend(qkv[:n_img], *image_shape, None),
            self._attend(qkv[n_img:], *text_shape, text_mask),
        ])
        rows = rows + self.out_proj(attended)
        return rows + self.mlp(self.ln_2(rows))


class CrossModalOutput(NamedTuple):
    fg_img: torch.Tensor  # [B, D] F_f^V: CLS row of Xf_V
    fg_txt: torch.Tensor  # [B, D] F_f^T: EOT row of Xf_T, or the differential pool of Xf_T with pooling on
    bg_img: torch.Tensor | None  # [B, D] F_b^V (bg branch run)
    bg_txt: torch.Tensor | None  # [B, D] F_b^T
    pool_mask: torch.Tensor | None  # [B, M] differential-pooling weights m_j
    img_tokens: torch.Tensor | None  # [nb*B, L, D] Xf_V (then Xb_V) when asked
    txt_tokens: torch.Tensor | None  # [nb*B, M, D] Xf_T (then Xb_T) when asked
    maps: tuple[torch.Tensor, torch.Tensor] | None  # head-averaged (W_f, W_b) [B, L, M], image rows incl. CLS


class CrossModalModule(nn.Module):
    """``Linear(embed_dim -> width)`` for the frozen text features, the shared CA, the shared SA stack.

    ``kernel`` picks the path of CA's attentions (``fba.kernels.BACKENDS``; ``auto``: fused on CUDA).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        text_dim: int,
        layers: int = 4,
        pooling: bool = False,
        pool_grad: bool = False,
        kernel: str = "auto",
    ):
        super().__init__()
        self.text_in = nn.Linear(text_dim, width)
        self.cross = CrossAttentionBlock(width, heads)
        self.layers = nn.ModuleList(SelfAttentionLayer(width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.pooling = pooling
        self.pool_grad = pool_grad
        self.kernel = kernel
        self.apply(_init_weights)

    def forward(
        self,
        image_tokens: torch.Tensor,
        fg: TextFeatures,
        bg: TextFeatures | None = None,
        return_tokens: bool = False,
        return_maps: bool = False,
    ) -> CrossModalOutput:
        """image_tokens [B, L, D] from the backbone (CLS first); ``bg`` None runs the fg branch only (nb = 1)."""
        if (self.pooling or return_maps) and bg is None:
            raise ValueError("differential pooling and attention maps need the bg caption too")
        texts = fg if bg is None else TextFeatures(*(torch.cat(pair) for pair in zip(fg, bg)))
        batch, length, width = image_tokens.shape
        if fg.states.shape[0] != batch or (bg is not None and bg.states.shape[0] != batch):
            raise ValueError(f"{batch} images but {fg.states.shape[0]} fg / "
                             f"{None if bg is None else bg.states.shape[0]} bg captions")
        text = self.text_in(texts.states.to(self.text_in.weight.dtype))
        text_batch, text_length = text.shape[:2]
        rows, stats, maps = self.cross(
            image_tokens, text, texts.valid, need_stats=self.pooling, return_maps=return_maps,
            backend=self.kernel, pool_grad=self.pool_grad,
        )
        image_shape, text_shape = (text_batch, length), (text_batch, text_length)
        text_mask = texts.valid[:, None, None, :]
        for layer in self.layers:
            rows = layer(rows, image_shape, text_shape, text_mask)
        rows = self.ln_post(rows)
        n_img = text_batch * length
        img_tokens = rows[:n_img].view(text_batch, length, width)
        txt_tokens = rows[n_img:].view(text_batch, text_length, width)
        img_global = img_tokens[:, 0]
        txt_global = txt_tokens[torch.arange(text_batch, device=rows.device), texts.eot]
        fg_txt, pool_mask = txt_global[:batch], None
        if self.pooling:
            fg_txt, pool_mask = pool_from_stats(
                stats[:, 0], stats[:, 1], stats[:, 2], txt_tokens[:batch], fg.valid & bg.valid, self.pool_grad
            )
        two = bg is not None
        return CrossModalOutput(
            fg_img=img_global[:batch],
            fg_txt=fg_txt,
            bg_img=img_global[batch:] if two else None,
            bg_txt=txt_global[batch:] if two else None,
            pool_mask=pool_mask,
            img_tokens=img_tokens if return_tokens else None,
            txt_tokens=txt_tokens if return_tokens else None,
            maps=maps,
        )


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
