from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fba.model.cross_modal import CrossAttentionBlock, CrossModalModule, SelfAttentionLayer
from fba.model.text import TextFeatures

WIDTH, HEADS, TEXT_DIM, LAYERS = 32, 4, 16, 2
B, L, M = 3, 5, 11


def make_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(B, L, WIDTH, generator=gen)

    def caption(eot):
        eot = torch.tensor(eot)
        return TextFeatures.from_eot(torch.randn(B, M, TEXT_DIM, generator=gen), eot)

    return image, caption([10, 4, 2]), caption([6, 10, 1])


def make_module(pooling=False, seed=0):
    torch.manual_seed(seed)
    module = CrossModalModule(WIDTH, HEADS, TEXT_DIM, LAYERS, pooling=pooling)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters, so that ln_q and ln_kv really differ
        for name, p in module.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return module.eval()


def naive_attention(q_x, kv_x, ln_q, ln_kv, wq, bq, wk, bk, wv, bv, mask):
    """One stream, one sample at a time, heads split by hand: the definition, not the packing."""
    q = F.linear(ln_q(q_x), wq, bq).view(q_x.shape[0], HEADS, -1).transpose(0, 1)
    k = F.linear(ln_kv(kv_x), wk, bk).view(kv_x.shape[0], HEADS, -1).transpose(0, 1)
    v = F.linear(ln_kv(kv_x), wv, bv).view(kv_x.shape[0], HEADS, -1).transpose(0, 1)
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1).reshape(q_x.shape[0], -1)


def naive_ca(block: CrossAttentionBlock, q_x, kv_x, kv_mask):
    wk, wv = block.kv_proj.weight.chunk(2)
    bk, bv = block.kv_proj.bias.chunk(2)
    att = naive_attention(q_x, kv_x, block.ln_q, block.ln_kv, block.q_proj.weight, block.q_proj.bias,
                          wk, bk, wv, bv, kv_mask)
    x = q_x + block.out_proj(att)
    return x + block.mlp(block.ln_2(x))


def naive_sa(layer: SelfAttentionLayer, x, mask):
    wq, wk, wv = layer.qkv.weight.chunk(3)
    bq, bk, bv = layer.qkv.bias.chunk(3)
    x = x + layer.out_proj(naive_attention(x, x, layer.ln_1, layer.ln_1, wq, bq, wk, bk, wv, bv, mask))
    return x + layer.mlp(layer.ln_2(x))


def naive_stream(module: CrossModalModule, q_x, kv_x, kv_mask, self_mask):
    x = naive_ca(module.cross, q_x, kv_x, kv_mask)
    for layer in module.layers:
        x = naive_sa(layer, x, self_mask)
    return module.ln_post(x)


def test_four_streams_equal_a_per_stream_loop():
    module = make_module()
    image, fg, bg = make_inputs()
    with torch.no_grad():
        out = module(image, fg, bg, return_tokens=True)
        for b in range(B):
            t_f, t_b = (module.text_in(t.states[b]) for t in (fg, bg))
            xf_v = naive_stream(module, image[b], t_f, fg.valid[b], None)
            xb_v = naive_stream(module, image[b], t_b, bg.valid[b], None)
            xf_t = naive_stream(module, t_f, image[b], None, fg.valid[b])
            xb_t = naive_stream(module, t_b, image[b], None, bg.valid[b])
            tol = dict(rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out.fg_img[b], xf_v[0], **tol)
            torch.testing.assert_close(out.bg_img[b], xb_v[0], **tol)
            torch.testing.assert_close(out.fg_txt[b], xf_t[fg.eot[b]], **tol)
            torch.testing.assert_close(out.bg_txt[b], xb_t[bg.eot[b]], **tol)
            valid = fg.valid[b]
            torch.testing.assert_close(out.txt_tokens[b][valid], xf_t[valid], **tol)
            torch.testing.assert_close(out.img_tokens[B + b], xb_v, **tol)


def test_parameter_count_is_one_ca_plus_the_sa_stack():
    module = make_module()
    d, hidden = WIDTH, 4 * WIDTH
    mlp = d * hidden + hidden + hidden * d + d
    ca = 2 * d * 2 + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d) + 2 * d + mlp
    sa = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + mlp
    text_in, ln_post = TEXT_DIM * d + d, 2 * d
    assert sum(p.numel() for p in module.parameters()) == text_in + ca + LAYERS * sa + ln_post
    assert sum(isinstance(m, CrossAttentionBlock) for m in module.modules()) == 1
    assert sum(isinstance(m, SelfAttentionLayer) for m in module.modules()) == LAYERS


def test_each_projection_runs_once_over_all_streams():
    module = make_module()
    image, fg, bg = make_inputs()
    calls = {}

    def record(name):
        return lambda mod, args, out: calls.setdefault(name, []).append(args[0].shape[0])

    hooks = [module.cross.q_proj.register_forward_hook(record("q")),
             module.cross.kv_proj.register_forward_hook(record("kv")),
             module.cross.out_proj.register_forward_hook(record("out")),
             module.layers[0].qkv.register_forward_hook(record("sa_qkv")),
             module.layers[1].mlp.c_fc.register_forward_hook(record("sa_mlp"))]
    module(image, fg, bg)
    for hook in hooks:
        hook.remove()
    inputs = B * L + 2 * B * M  # the image once, both captions
    streams = 2 * B * L + 2 * B * M  # image rows per branch, caption rows
    assert calls == {"q": [inputs], "kv": [inputs], "out": [streams], "sa_qkv": [streams], "sa_mlp": [streams]}


def test_fg_branch_alone_equals_fg_branch_of_both():
    """The four streams never mix, so running only the fg streams (nb = 1) gives the same fg features."""
    module = make_module()
    image, fg, bg = make_inputs(seed=1)
    with torch.no_grad():
        both, alone = module(image, fg, bg), module(image, fg)
    assert alone.bg_img is None and alone.bg_txt is None and alone.pool_mask is None
    torch.testing.assert_close(alone.fg_img, both.fg_img)
    torch.testing.assert_close(alone.fg_txt, both.fg_txt)


def test_padding_rows_change_nothing():
    module = make_module(pooling=True)
    image, fg, bg = make_inputs(seed=2)
    noisy_fg = TextFeatures(torch.where(fg.valid[..., None], fg.states, torch.randn_like(fg.states) * 5), fg.valid, fg.eot)
    with torch.no_grad():
        a, b = module(image, fg, bg), module(image, noisy_fg, bg)
    for x, y in zip(a[:5], b[:5]):
        torch.testing.assert_close(x, y)


def test_pooling_output_and_attention_maps():
    module = make_module(pooling=True)
    image, fg, bg = make_inputs(seed=3)
    out = module(image, fg, bg, return_maps=True)
    w_f, w_b = out.maps
    assert w_f.shape == (B, L, M)
    torch.testing.assert_close(w_f.sum(-1), torch.ones(B, L))
    assert w_f.masked_select(~fg.valid[:, None, :].expand(B, L, M)).eq(0).all()
    assert w_b.masked_select(~bg.valid[:, None, :].expand(B, L, M)).eq(0).all()
    both = fg.valid & bg.valid
    assert out.pool_mask.shape == (B, M) and out.pool_mask[~both].eq(0).all()
    from fba.model.pooling import differential_pool

    with torch.no_grad():
        tokens = module(image, fg, bg, return_tokens=True).txt_tokens[:B]
    pooled, mask = differential_pool(w_f[:, 1:], w_b[:, 1:], tokens, both)
    torch.testing.assert_close(out.pool_mask, mask, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.fg_txt, pooled, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fused cross-attention path)")
@pytest.mark.parametrize("dtype, tol, mask_tol", [(torch.float32, 1e-4, 1e-3), (torch.bfloat16, 5e-2, 1e-1)])
def test_cuda_module_matches_cpu_reference(dtype, tol, mask_tol):
    """The module on CUDA (fused kernels where the dispatcher picks them) against the CPU reference path.

    The pooling mask min-max scales the column similarities, which multiplies errors by 1 / (max s - min s);
    larger q/k projections make the attention peaked enough for that spread to be >= 0.01 here."""
    module = make_module(pooling=True)
    with torch.no_grad():
        module.cross.q_proj.weight.mul_(10)
        module.cross.kv_proj.weight.mul_(10)
    image, fg, bg = make_inputs(seed=4)
    with torch.no_grad():
        want = module(image, fg, bg)
        cuda = module.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            got = cuda(image.cuda(), fg.to("cuda"), bg.to("cuda"))
    for name in ("fg_img", "bg_img", "bg_txt"):
        torch.testing.assert_close(getattr(got, name).float().cpu(), getattr(want, name), rtol=tol, atol=tol)
    for name in ("pool_mask", "fg_txt"):
        torch.testing.assert_close(getattr(got, name).float().cpu(), getattr(want, name), rtol=mask_tol, atol=mask_tol)


def test_pool_grad_reaches_the_mask_only_when_asked():
    image, fg, bg = make_inputs(seed=5)
    for pool_grad in (False, True):
        module = make_module(pooling=True)
        module.pool_grad = pool_grad
        out = module(image, fg, bg)
        assert out.pool_mask.requires_grad == pool_grad
        assert out.fg_txt.requires_grad


def test_config_kernel_choices_are_the_kernel_backends():
    import typing

    from fba import kernels
    from fba.config import Kernel

    assert typing.get_args(Kernel) == kernels.BACKENDS
