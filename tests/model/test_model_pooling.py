from __future__ import annotations

import numpy as np
import pytest
import torch

from fba.kernels import cross_attention
from fba.model.pooling import differential_pool, pool_from_stats


def spec_pool_numpy(w_f, w_b, tokens, valid):
    """docs/design.md#differential-pooling written out per sample and per column, in float64."""
    batch, _, cols = w_f.shape
    pooled, masks = [], []
    for b in range(batch):
        cols_valid = [j for j in range(cols) if valid[b, j]]
        sim = {}
        for j in cols_valid:
            f, g = w_f[b, :, j], w_b[b, :, j]
            sim[j] = f @ g / (np.linalg.norm(f) * np.linalg.norm(g) + 1e-6)
        lo, hi = min(sim.values()), max(sim.values())
        m = np.zeros(cols)
        for j in cols_valid:
            m[j] = (sim[j] - lo) / (hi - lo + 1e-6)
        pooled.append((m[:, None] * tokens[b]).sum(0) / (m.sum() + 1e-6))
        masks.append(m)
    return np.stack(pooled), np.stack(masks)


def random_maps(batch=3, rows=7, cols=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([cols, 5, 3])[:batch]
    valid = torch.arange(cols)[None] < lengths[:, None]
    logits_f, logits_b = torch.randn(2, batch, rows, cols, generator=gen)
    w_f = logits_f.masked_fill(~valid[:, None], -torch.inf).softmax(-1)
    w_b = logits_b.masked_fill(~valid[:, None], -torch.inf).softmax(-1)
    tokens = torch.randn(batch, cols, 6, generator=gen)
    return w_f, w_b, tokens, valid


def test_differential_pool_matches_numpy_spec():
    w_f, w_b, tokens, valid = random_maps()
    valid[0, 7] = False  # a column padded in only one of the two captions
    pooled, mask = differential_pool(w_f, w_b, tokens, valid)
    want_pooled, want_mask = spec_pool_numpy(*(t.double().numpy() for t in (w_f, w_b, tokens)), valid.numpy())
    np.testing.assert_allclose(mask.numpy(), want_mask, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled.numpy(), want_pooled, rtol=1e-5, atol=1e-5)
    assert mask[~valid].eq(0).all()
    assert torch.allclose(mask.amax(-1), torch.ones(3), atol=1e-5) and mask.masked_fill(~valid, 1).amin(-1).eq(0).all()


def test_pool_from_stats_matches_numpy_spec():
    w_f, w_b, tokens, valid = random_maps(seed=1)
    stats = torch.stack([(w_f * w_b).sum(1), (w_f**2).sum(1), (w_b**2).sum(1)], 1)
    pooled, mask = pool_from_stats(stats[:, 0], stats[:, 1], stats[:, 2], tokens, valid)
    want_pooled, want_mask = spec_pool_numpy(*(t.double().numpy() for t in (w_f, w_b, tokens)), valid.numpy())
    np.testing.assert_allclose(mask.numpy(), want_mask, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled.numpy(), want_pooled, rtol=1e-5, atol=1e-5)


def test_pool_grad_stays_finite_for_a_column_no_patch_attends_to():
    w_f, w_b, tokens, valid = random_maps(seed=5)
    w_f = w_f.clone()
    w_f[0, :, 2] = 0  # a valid column whose softmax underflowed in every row
    w_f.requires_grad_(True)
    w_b.requires_grad_(True)
    pooled, mask = differential_pool(w_f, w_b, tokens, valid, pool_grad=True)
    pooled.square().sum().backward()
    assert torch.isfinite(w_f.grad).all() and torch.isfinite(w_b.grad).all()
    want_pooled, want_mask = spec_pool_numpy(*(t.detach().double().numpy() for t in (w_f, w_b, tokens)),
                                             valid.numpy())
    np.testing.assert_allclose(mask.detach().numpy(), want_mask, rtol=1e-5, atol=1e-6)


def test_kernel_reference_stats_exclude_the_cls_row():
    """The fused kernel's column sums (rows >= 1) feed pool_from_stats as the maps without their CLS row do."""
    gen = torch.Generator().manual_seed(2)
    q, k_f, v_f, k_b, v_b = (torch.randn(2, 3, n, 8, generator=gen) for n in (5, 6, 6, 6, 6))
    valid_f = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    valid_b = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    *_, stats, (w_f, w_b) = cross_attention.reference(q, k_f, v_f, k_b, v_b, valid_f, valid_b, return_maps=True)
    tokens, valid = torch.randn(2, 6, 4, generator=gen), valid_f & valid_b
    torch.testing.assert_close(
        pool_from_stats(stats[:, 0], stats[:, 1], stats[:, 2], tokens, valid),
        differential_pool(w_f[:, 1:], w_b[:, 1:], tokens, valid),
    )


def test_constant_column_similarity_gives_zero_mask_and_zero_feature():
    """Identical columns (uniform image->text attention) give one s for all columns: m = 0 / 1e-6 = 0."""
    _, _, tokens, valid = random_maps(seed=3)
    w_f = valid[:, None, :].float().expand(3, 7, 9) / valid.sum(-1)[:, None, None]
    w_b = torch.rand(3, 7, 1).expand(3, 7, 9) * valid[:, None, :]
    pooled, mask = differential_pool(w_f, w_b, tokens, valid)
    assert mask.eq(0).all() and pooled.eq(0).all()
    want_pooled, want_mask = spec_pool_numpy(*(t.double().numpy() for t in (w_f, w_b, tokens)), valid.numpy())
    assert (want_mask == 0).all() and (want_pooled == 0).all()


@pytest.mark.parametrize("pool_grad", [False, True])
def test_pool_grad_switch(pool_grad):
    w_f, w_b, tokens, valid = random_maps(seed=4)
    w_f.requires_grad_(True)
    w_b.requires_grad_(True)
    tokens.requires_grad_(True)
    pooled, mask = differential_pool(w_f, w_b, tokens, valid, pool_grad=pool_grad)
    pooled.square().sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    if pool_grad:
        assert mask.requires_grad and w_f.grad.abs().sum() > 0 and w_b.grad.abs().sum() > 0
    else:
        assert not mask.requires_grad and w_f.grad is None and w_b.grad is None
