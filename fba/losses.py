"""Losses of FBA (docs/design.md#losses): ID with label smoothing, batch-hard triplet, diversity, and their total.

Every term is returned by name as a detached tensor (no ``.item()``: no host sync in the training step).

Several ranks (docs/distributed.md): with ``loss.gather_across_ranks`` the batch-hard triplet mines over the
features of every rank's micro-batch, as one GPU with the whole batch would; ID and diversity terms compare an
image with its own label and its own four features, so their per-rank means averaged by the engine are already
the global ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fba.config import LossConfig, ModelConfig
from fba.distributed import gather_no_grad, gather_with_local_grad, world

__all__ = ["FBALoss", "diversity_loss", "id_loss", "pairwise_euclidean", "triplet_loss"]


def id_loss(logits: torch.Tensor, pids: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy with label smoothing; torch's form equals CLIP-ReID's ``CrossEntropyLabelSmooth``."""
    return F.cross_entropy(logits.float(), pids, label_smoothing=label_smoothing)


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B] Euclidean distances, clamped at 1e-12 under the root as TransReID's ``euclidean_dist``."""
    x = x.float()
    sq = x.pow(2).sum(dim=1, keepdim=True)
    return (sq + sq.t() - 2.0 * x @ x.t()).clamp(min=1e-12).sqrt()


def triplet_loss(features: torch.Tensor, pids: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet on un-normalised features: hardest positive (the anchor itself included, as
    TransReID's mining does) and hardest negative per anchor, ``mean(relu(d_ap - d_an + margin))``.
    An anchor without negatives contributes 0."""
    dist = pairwise_euclidean(features)
    same = pids[:, None] == pids[None, :]
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum(dim=-1)


def _triple(a, b, c, d, margin: float) -> torch.Tensor:
    """T(a, b | c, d) per sample: b is a's positive, c and d its negatives."""
    pos = _sq_dist(a, b)
    return F.relu(pos - _sq_dist(a, c) + margin) + F.relu(pos - _sq_dist(a, d) + margin)


def diversity_loss(
    f_t: torch.Tensor,
    f_v: torch.Tensor,
    b_t: torch.Tensor,
    b_v: torch.Tensor,
    margin: float = 0.3,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_div = L_tri-div + L_con on the four global features of each image (F_f^T, F_f^V, F_b^T, F_b^V).

    Each feature is L2-normalised. L_tri-div sums T over the four configurations of the paper's Eq. (9),
    (f_t,f_v|b_t,b_v), (b_t,b_v|f_t,f_v), (f_v,f_t|b_t,b_v), (b_v,b_t|f_t,f_v), averaged over the batch;
    L_con = (1 - cos(f_t, f_v)) + (1 - cos(b_t, b_v)), averaged over the batch.
    """
    f_t, f_v, b_t, b_v = (F.normalize(x.float(), dim=-1) for x in (f_t, f_v, b_t, b_v))
    tri = (
        _triple(f_t, f_v, b_t, b_v, margin)
        + _triple(b_t, b_v, f_t, f_v, margin)
        + _triple(f_v, f_t, b_t, b_v, margin)
        + _triple(b_v, b_t, f_t, f_v, margin)
    ).mean()
    con = ((1 - (f_t * f_v).sum(-1)) + (1 - (b_t * b_v).sum(-1))).mean()
    return tri + con, {"div_tri": tri.detach(), "div_con": con.detach()}


class FBALoss(nn.Module):
    """``L = L_ID + L_Tri + L_ID^C + L_Tri^C + lambda * L_div`` over the outputs of ``FBA.forward``.

    Parts: ``id``, ``tri`` (backbone CLS); with cross_modal ``id_c``, ``tri_c`` (summed over F_f^V and
    F_f^T); with diversity ``div_tri``, ``div_con`` and ``div`` (their sum, before the weight lambda).
    """

    def __init__(self, loss_cfg: LossConfig, model_cfg: ModelConfig):
        super().__init__()
        self.cfg = loss_cfg
        self.cross_modal = model_cfg.cross_modal
        self.diversity = model_cfg.cross_modal and model_cfg.diversity

    def forward(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor):
        cfg = self.cfg
        gather = cfg.gather_across_ranks and world()[1] > 1
        mined_pids = gather_no_grad(pids) if gather else pids

        def triplet(features: torch.Tensor) -> torch.Tensor:
            features = gather_with_local_grad(features) if gather else features
            return triplet_loss(features, mined_pids, cfg.triplet_margin)

        parts = {
            "id": id_loss(outputs["cls_logits"], pids, cfg.label_smoothing),
            "tri": triplet(outputs["cls"]),
        }
        total = parts["id"] + parts["tri"]
        if self.cross_modal:
            parts["id_c"] = id_loss(outputs["fg_img_logits"], pids, cfg.label_smoothing) + id_loss(
                outputs["fg_txt_logits"], pids, cfg.label_smoothing
            )
            parts["tri_c"] = triplet(outputs["fg_img"]) + triplet(outputs["fg_txt"])
            total = total + parts["id_c"] + parts["tri_c"]
        if self.diversity:
            div, div_parts = diversity_loss(
                outputs["fg_txt"], outputs["fg_img"], outputs["bg_txt"], outputs["bg_img"], cfg.diversity_margin
            )
            parts.update(div_parts, div=div)
            total = total + cfg.diversity_weight * div
        return total, {name: value.detach() for name, value in parts.items()}
