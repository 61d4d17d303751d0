from __future__ import annotations

import math

import pytest
import torch

from fba.config import LossConfig, ModelConfig
from fba.losses import FBALoss, diversity_loss, id_loss, pairwise_euclidean, triplet_loss


def test_id_loss_is_label_smoothed_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits, pids = torch.randn(5, 7, generator=gen), torch.tensor([0, 3, 6, 3, 1])
    log_p = logits.log_softmax(-1)
    target = torch.full((5, 7), 0.1 / 7)
    target[torch.arange(5), pids] += 0.9
    torch.testing.assert_close(id_loss(logits, pids, 0.1), -(target * log_p).sum(-1).mean())


def test_triplet_matches_brute_force_loop():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(8, 5, generator=gen) * 3
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    total = 0.0
    for a in range(8):
        dist = [math.dist(feats[a].tolist(), feats[j].tolist()) for j in range(8)]
        pos = max(dist[j] for j in range(8) if pids[j] == pids[a])
        neg = min(dist[j] for j in range(8) if pids[j] != pids[a])
        total += max(0.0, pos - neg + 0.3)
    assert triplet_loss(feats, pids, 0.3).item() == pytest.approx(total / 8, rel=1e-5)
    brute = torch.tensor([[math.dist(x.tolist(), y.tolist()) for y in feats] for x in feats])
    dist = pairwise_euclidean(feats)
    off = ~torch.eye(8, dtype=torch.bool)
    torch.testing.assert_close(dist[off], brute[off], rtol=1e-4, atol=1e-4)
    assert dist.diagonal().max() < 1e-2  # |x|^2 + |x|^2 - 2x.x cancels to rounding noise, as in TransReID


def test_triplet_is_zero_when_classes_are_far_apart_and_handles_single_identity():
    feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.0, 0.1]])
    assert triplet_loss(feats, torch.tensor([0, 0, 1, 1])).item() == 0.0
    assert triplet_loss(feats, torch.tensor([0, 0, 0, 0])).item() == 0.0  # no negatives at all


def test_diversity_loss_hand_computed():
    """Worked out by hand. Sample 1 (unit vectors after normalisation):
    f_t=(1,0), f_v=(0,1), b_t=(1,0), b_v=(0,-1); squared distances 2 - 2cos:
    d(f_t,f_v)=2, d(f_t,b_t)=0, d(f_t,b_v)=2, d(f_v,b_t)=2, d(f_v,b_v)=4, d(b_t,b_v)=2.
      T(f_t,f_v|b_t,b_v) = [2-0+.3] + [2-2+.3] = 2.6
      T(b_t,b_v|f_t,f_v) = [2-0+.3] + [2-2+.3] = 2.6
      T(f_v,f_t|b_t,b_v) = [2-2+.3] + [2-4+.3]_+ = 0.3
      T(b_v,b_t|f_t,f_v) = [2-2+.3] + [2-4+.3]_+ = 0.3   -> 5.8;  L_con = (1-0) + (1-0) = 2
    Sample 2: all four equal -> every distance 0 -> each T = 0.6 -> 2.4;  L_con = 0.
    Batch means: tri = 4.1, con = 1.0, total 5.1.
    """
    f_t = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # scaled: the loss normalises
    f_v = torch.tensor([[0.0, 0.5], [3.0, 3.0]])
    b_t = torch.tensor([[1.0, 0.0], [0.2, 0.2]])
    b_v = torch.tensor([[0.0, -4.0], [1.0, 1.0]])
    total, parts = diversity_loss(f_t, f_v, b_t, b_v, margin=0.3)
    assert parts["div_tri"].item() == pytest.approx(4.1, abs=1e-5)
    assert parts["div_con"].item() == pytest.approx(1.0, abs=1e-5)
    assert total.item() == pytest.approx(5.1, abs=1e-5)


def fake_outputs(batch=4, dim=6, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = ["cls", "fg_img", "fg_txt", "bg_img", "bg_txt"]
    out = {k: torch.randn(batch, dim, generator=gen, requires_grad=True) for k in keys}
    for k in ("cls", "fg_img", "fg_txt"):
        out[f"{k}_logits"] = torch.randn(batch, classes, generator=gen, requires_grad=True)
    return out


@pytest.mark.parametrize("switches, names", [
    (dict(cross_modal=False, diversity=False, pooling=False), {"id", "tri"}),
    (dict(diversity=False), {"id", "tri", "id_c", "tri_c"}),
    (dict(), {"id", "tri", "id_c", "tri_c", "div_tri", "div_con", "div"}),
])
def test_total_loss_terms_follow_the_switches(switches, names):
    out, pids = fake_outputs(), torch.tensor([0, 0, 1, 1])
    cfg = LossConfig()
    total, parts = FBALoss(cfg, ModelConfig(**switches))(out, pids)
    assert set(parts) == names
    assert all(not v.requires_grad for v in parts.values())
    want = id_loss(out["cls_logits"], pids) + triplet_loss(out["cls"], pids)
    if "id_c" in names:
        want = want + id_loss(out["fg_img_logits"], pids) + id_loss(out["fg_txt_logits"], pids)
        want = want + triplet_loss(out["fg_img"], pids) + triplet_loss(out["fg_txt"], pids)
    if "div" in names:
        div, _ = diversity_loss(out["fg_txt"], out["fg_img"], out["bg_txt"], out["bg_img"])
        torch.testing.assert_close(parts["div"], div.detach())
        want = want + 0.5 * div
    torch.testing.assert_close(total, want)
    total.backward()
    assert out["cls"].grad is not None
