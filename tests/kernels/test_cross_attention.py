"""Fused image->text cross-attention with stats (Triton; CUDA on a GPU) against the PyTorch reference."""
from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from fba import kernels
from fba.kernels import cross_attention, cross_attention_op

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_inputs(batch, heads, nq, m, dim, dtype=torch.float32, device="cpu", padding="random", seed=0):
    """Fresh random q, k_f, v_f, k_b, v_b (leaf tensors) and key-validity masks with at least one real key."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, nq, dim, generator=gen)
    kv = [torch.randn(batch, heads, m, dim, generator=gen) for _ in range(4)]
    if padding == "none":
        valid = [torch.ones(batch, m, dtype=torch.bool) for _ in range(2)]
    elif padding == "all_but_one":
        valid = [torch.zeros(batch, m, dtype=torch.bool) for _ in range(2)]
        for v in valid:
            v[torch.arange(batch), torch.randint(0, m, (batch,), generator=gen)] = True
    else:
        valid = [torch.rand(batch, m, generator=gen) > 0.4 for _ in range(2)]
        for v in valid:
            v[:, 0] = True
    tensors = [t.to(device=device, dtype=dtype).requires_grad_() for t in [q, *kv]]
    return tensors, [v.to(device) for v in valid]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref||, with a floor of 0.1 per element (O(1) inputs) for gradients that vanish exactly."""
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / (ref.norm() + ref.numel() ** 0.5 * 0.1)).item()


def run(fn, tensors, valid, row_start, grad_outs):
    """Outputs (o_f, o_b, stats) and the gradients of <o_f, g_f> + <o_b, g_b> wrt q, k_f, v_f, k_b, v_b."""
    o_f, o_b, stats = fn(*tensors, *valid, row_start)
    loss = (o_f.double() * grad_outs[0]).sum() + (o_b.double() * grad_outs[1]).sum()
    grads = torch.autograd.grad(loss, tensors)
    return [o_f, o_b, stats, *grads]


NAMES = ["o_f", "o_b", "stats", "dq", "dk_f", "dv_f", "dk_b", "dv_b"]

CASES = [  # (B, H, Nq, M, d, padding, row_start)
    (2, 2, 13, 7, 16, "random", 1),
    (2, 3, 37, 20, 16, "all_but_one", 1),
    (1, 4, 17, 16, 32, "none", 0),
    (2, 2, 5, 9, 24, "random", 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}N{}M{}d{}-{}-r{}".format(*c))
def test_triton_matches_reference_fp32(case, poisoned, device):
    *shape, padding, row_start = case
    tensors, valid = make_inputs(*shape, device=device, padding=padding, seed=zlib.crc32(repr(case).encode()) % 1000)
    grad_outs = [torch.randn(tensors[0].shape, dtype=torch.float64, device=device) for _ in range(2)]
    got = run(cross_attention_op.fused, tensors, valid, row_start, grad_outs)
    want = run(cross_attention.reference, tensors, valid, row_start, grad_outs)
    for name, g, w in zip(NAMES, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert torch.isfinite(g).all(), f"{name} has unwritten (NaN) or non-finite elements"
        assert rel_err(g, w) <= 1e-5, f"{name}: relative error {rel_err(g, w):.2e}"


def test_triton_wider_row_tiles_fill_every_stats_slot(poisoned, device, monkeypatch):
    """Row tiles of 32 cover two 16-row stats slots: the second must be zeroed, the last one past Nq left alone."""
    from fba.kernels import cross_attention_triton as tri

    monkeypatch.setattr(tri, "_forward", tri._forward_kernel)
    monkeypatch.setattr(tri, "_backward", tri._backward_kernel)
    monkeypatch.setattr(tri, "FORWARD_CONFIG", {"BLOCK_N": 32})
    monkeypatch.setattr(tri, "BACKWARD_CONFIG", {"BLOCK_N": 32})
    tensors, valid = make_inputs(2, 2, 37, 10, 16, device=device, seed=21)
    grad_outs = [torch.randn(tensors[0].shape, dtype=torch.float64, device=device) for _ in range(2)]
    got = run(cross_attention_op.fused, tensors, valid, 1, grad_outs)
    want = run(cross_attention.reference, tensors, valid, 1, grad_outs)
    for name, g, w in zip(NAMES, got, want):
        assert torch.isfinite(g).all(), f"{name} has unwritten (NaN) or non-finite elements"
        assert rel_err(g, w) <= 1e-5, f"{name}: relative error {rel_err(g, w):.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_low_precision_within_twice_pytorch_error(dtype, poisoned, device):
    """flash-attention's rule: error vs an fp64 reference at most 2x that of PyTorch in the same dtype (+ a floor)."""
    tensors, valid = make_inputs(2, 2, 21, 13, 16, dtype=dtype, device=device, seed=7)
    grad_outs = [torch.randn(tensors[0].shape, dtype=torch.float64, device=device) for _ in range(2)]
    exact = [t.detach().double().requires_grad_() for t in tensors]
    want = run(cross_attention.reference, exact, valid, 1, grad_outs)
    same_dtype = run(cross_attention.reference, tensors, valid, 1, grad_outs)
    got = run(cross_attention_op.fused, tensors, valid, 1, grad_outs)
    floor = 2e-3 if dtype == torch.float16 else 1e-2
    for name, g, s, w in zip(NAMES, got, same_dtype, want):
        assert g.dtype == s.dtype, name
        assert torch.isfinite(g).all(), f"{name} has unwritten (NaN) or non-finite elements"
        assert rel_err(g, w) <= 2 * rel_err(s, w) + floor, f"{name}: {rel_err(g, w):.2e} vs {rel_err(s, w):.2e}"


def test_triton_takes_strided_views_like_the_model(poisoned, device):
    """Heads split from [B, L, H*d] rows and k/v from one chunked projection: non-contiguous, no copies needed."""
    gen = torch.Generator().manual_seed(3)
    batch, heads, nq, m, dim = 2, 2, 11, 9, 16
    q_rows = torch.randn(batch, nq, heads * dim, generator=gen).to(device).requires_grad_()
    kv_rows = torch.randn(2 * batch, m, 2 * heads * dim, generator=gen).to(device).requires_grad_()
    valid = torch.rand(2 * batch, m, generator=gen).to(device) > 0.3
    valid[:, 0] = True

    def split(fn):
        q = q_rows.view(batch, nq, heads, dim).transpose(1, 2)
        k, v = (t.reshape(2 * batch, m, heads, dim).transpose(1, 2) for t in kv_rows.chunk(2, dim=-1))
        assert not q.is_contiguous() and not k.is_contiguous()
        out = fn(q, k[:batch], v[:batch], k[batch:], v[batch:], valid[:batch], valid[batch:], 1)
        grads = torch.autograd.grad(out[0].sum() + 2 * out[1].sum(), [q_rows, kv_rows])
        return [*out, *grads]

    for g, w in zip(split(cross_attention_op.fused), split(cross_attention.reference)):
        assert rel_err(g, w) <= 1e-5


def test_dispatcher_runs_the_op_unless_reference_is_asked(poisoned, device, monkeypatch):
    tensors, valid = make_inputs(2, 2, 9, 6, 16, device=device, seed=11)
    q, k_f, v_f, k_b, v_b = tensors
    calls = []
    real_fused = cross_attention_op.fused
    monkeypatch.setattr(cross_attention_op, "fused", lambda *a, **kw: calls.append(kw["backend"]) or real_fused(*a, **kw))
    k_txt, v_txt = torch.cat([k_f, k_b]), torch.cat([v_f, v_b])
    txt_valid = torch.cat(valid)
    args = (q, k_f, v_f, q[:, :, :6].repeat(2, 1, 1, 1), k_txt, v_txt, txt_valid)
    ref = kernels.cross_modal_attention(*args, need_stats=True, backend="reference")
    assert calls == []
    tri = kernels.cross_modal_attention(*args, need_stats=True, backend="triton")
    assert calls == ["triton"]
    auto = kernels.cross_modal_attention(*args, need_stats=True)
    assert calls == ["triton", "triton" if device == "cuda" else "reference"]
    with kernels.decomposed():
        kernels.cross_modal_attention(*args, need_stats=True, backend="triton")
        if device == "cpu":  # the one switch wins before a backend is checked: cuda on CPU tensors would raise
            kernels.cross_modal_attention(*args, need_stats=True, backend="cuda")
    assert len(calls) == 2
    for got in (tri, auto):
        for g, w in zip(got, ref):
            assert rel_err(g, w) <= 1e-5


def run_with_stats(fn, tensors, valid, row_start, grad_outs):
    """Like ``run`` with a loss that also weighs the stats by a fixed random [B,3,M] cotangent."""
    o_f, o_b, stats = fn(*tensors, *valid, row_start)
    loss = ((o_f.double() * grad_outs[0]).sum() + (o_b.double() * grad_outs[1]).sum()
            + (stats.double() * grad_outs[2]).sum())
    return [o_f, o_b, stats, *torch.autograd.grad(loss, tensors)]


STATS_CASES = [  # (B, H, Nq, M, d, padding, row_start): odd sizes, padding, rows past one tile
    (2, 2, 13, 7, 16, "random", 1),
    (1, 3, 37, 20, 24, "all_but_one", 1),
    (2, 2, 17, 16, 16, "none", 0),
]


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("case", STATS_CASES, ids=lambda c: "B{}H{}N{}M{}d{}-{}-r{}".format(*c))
def test_stats_gradient_of_the_op_matches_the_reference(case, backend, poisoned, device):
    """pool_grad: the fused backward (and the op's PyTorch backward) give the stats their gradient."""
    *shape, padding, row_start = case
    tensors, valid = make_inputs(*shape, device=device, padding=padding, seed=zlib.crc32(repr(case).encode()) % 997)
    batch, _, nq, m, _ = shape
    grad_outs = [torch.randn(tensors[0].shape, dtype=torch.float64, device=device) for _ in range(2)]
    grad_outs.append(torch.randn(batch, 3, m, dtype=torch.float64, device=device))
    got = run_with_stats(lambda *a: cross_attention_op.fused(*a, backend=backend, stats_grad=True), tensors, valid,
                         row_start, grad_outs)
    want = run_with_stats(cross_attention.reference, tensors, valid, row_start, grad_outs)
    without_stats = run(cross_attention.reference, tensors, valid, row_start, grad_outs[:2])
    for name, g, w, wo in zip(NAMES, got, want, without_stats):
        assert torch.isfinite(g).all(), f"{name} has unwritten (NaN) or non-finite elements"
        assert rel_err(g, w) <= 1e-5, f"{name}: relative error {rel_err(g, w):.2e}"
        if name in ("dq", "dk_f", "dk_b") and padding != "all_but_one":  # one key: P is constant, no gradient
            assert rel_err(wo, w) > 1e-3, f"{name}: the stats' term must matter in this case"


def test_pool_grad_gives_the_stats_a_gradient_through_the_fused_op(poisoned, device):
    tensors, valid = make_inputs(1, 2, 7, 5, 16, device=device, seed=5)
    _, _, stats = kernels.cross_attention_with_stats(*tensors, *valid, backend="triton", pool_grad=True)
    assert stats.requires_grad and stats.grad_fn is not None
    _, _, stats = kernels.cross_attention_with_stats(*tensors, *valid, backend="triton")
    assert not stats.requires_grad


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_custom_op_passes_opcheck(backend, device):
    """Schema, fake (meta) outputs, autograd registration and AOT dispatch with dynamic shapes."""
    from fba.kernels import cross_attention_op  # noqa: F401 - registers torch.ops.fba

    tensors, valid = make_inputs(2, 2, 11, 7, 16, device=device, seed=13)
    for stats_grad in (False, True):
        torch.library.opcheck(torch.ops.fba.cross_attention_with_stats.default,
                              (*tensors, *valid, 1, backend, stats_grad))
    lse = cross_attention.reference_forward(*tensors, *valid, 1)[3]
    outs = [t.detach() for t in cross_attention.reference_forward(*tensors, *valid, 1)[:2]]
    grads = [torch.randn_like(o) for o in outs]
    dstats = torch.randn(2, 3, 7, device=device)
    for d in (None, dstats):
        torch.library.opcheck(torch.ops.fba.cross_attention_with_stats_backward.default,
                              (*[t.detach() for t in tensors], *valid, *outs, lse, *grads, d, 1, backend),
                              test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs_are_refused_with_clear_errors(device):
    tensors, valid = make_inputs(1, 2, 5, 4, 16, device=device)
    with pytest.raises(ValueError, match="unknown kernel backend 'fast'"):
        kernels.cross_attention_with_stats(*tensors, *valid, backend="fast")
    with pytest.raises(ValueError, match="valid_f must be a bool"):
        cross_attention_op.fused(*tensors, valid[0].float(), valid[1])
    with pytest.raises(ValueError, match="k_b must be"):
        cross_attention_op.fused(tensors[0], tensors[1], tensors[2], tensors[3][:, :, :3], tensors[4], *valid)
    long_keys, long_valid = make_inputs(1, 1, 3, 129, 16, device=device)
    with pytest.raises(ValueError, match="129 keys"):
        cross_attention_op.fused(*long_keys, *long_valid)
    if device == "cpu":
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            kernels.resolve_backend("cuda", tensors[0], tensors[1])


@GPU
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_fused_bf16_at_paper_sizes_on_gpu(backend):
    """The paper's shapes (ViT-B/16 at 384x128 with stride 12: 1 + 31x10 patches -> 311 rows, 77 caption tokens)."""
    tensors, valid = make_inputs(4, 12, 311, 77, 64, dtype=torch.bfloat16, device="cuda", seed=1)
    grad_outs = [torch.randn(tensors[0].shape, dtype=torch.float64, device="cuda") for _ in range(2)]
    exact = [t.detach().double().requires_grad_() for t in tensors]
    want = run(cross_attention.reference, exact, valid, 1, grad_outs)
    same_dtype = run(cross_attention.reference, tensors, valid, 1, grad_outs)
    got = run(lambda *a: cross_attention_op.fused(*a, backend=backend), tensors, valid, 1, grad_outs)
    for name, g, s, w in zip(NAMES, got, same_dtype, want):
        assert torch.isfinite(g).all(), name
        assert rel_err(g, w) <= 2 * rel_err(s, w) + 1e-2, f"{name}: {rel_err(g, w):.2e} vs {rel_err(s, w):.2e}"


@GPU
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_fused_forward_allocates_no_attention_map_on_gpu(backend):
    """Beyond its outputs, lse and stats partials, the fused forward allocates less than one [B,H,N,M] fp32 map."""
    batch, heads, nq, m, dim = 8, 12, 311, 77, 64
    tensors, valid = make_inputs(batch, heads, nq, m, dim, dtype=torch.bfloat16, device="cuda", seed=2)
    with torch.no_grad():
        cross_attention_op.fused(*tensors, *valid, backend=backend)  # build / autotune outside the measurement
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = cross_attention_op.fused(*tensors, *valid, backend=backend)
        torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    outputs = sum(t.numel() * t.element_size() for t in out)
    one_map = batch * heads * nq * m * 4
    assert extra - outputs < one_map // 4, f"{extra - outputs} bytes beyond the outputs; one map is {one_map}"


@GPU
def test_stats_gradient_bf16_at_paper_sizes_on_gpu():
    """pool_grad at the paper's shapes: the fused backward with the stats' term within 2x PyTorch's bf16 error."""
    tensors, valid = make_inputs(4, 12, 311, 77, 64, dtype=torch.bfloat16, device="cuda", seed=4)
    grad_outs = [torch.randn(tensors[0].shape, dtype=torch.float64, device="cuda") for _ in range(2)]
    grad_outs.append(100 * torch.randn(4, 3, 77, dtype=torch.float64, device="cuda"))
    exact = [t.detach().double().requires_grad_() for t in tensors]
    want = run_with_stats(cross_attention.reference, exact, valid, 1, grad_outs)
    same_dtype = run_with_stats(cross_attention.reference, tensors, valid, 1, grad_outs)
    got = run_with_stats(lambda *a: cross_attention_op.fused(*a, backend="triton", stats_grad=True), tensors, valid, 1,
                         grad_outs)
    for name, g, s, w in zip(NAMES, got, same_dtype, want):
        assert torch.isfinite(g).all(), name
        assert rel_err(g, w) <= 2 * rel_err(s, w) + 1e-2, f"{name}: {rel_err(g, w):.2e} vs {rel_err(s, w):.2e}"


def test_flop_counter_counts_the_op_as_the_decomposition(device):
    from torch.utils.flop_counter import FlopCounterMode

    tensors, valid = make_inputs(2, 2, 11, 7, 16, device=device, seed=17)

    def flops(fn):
        counter = FlopCounterMode(display=False)
        with counter:
            o_f, o_b, _ = fn(*tensors, *valid, 1)
            (o_f.sum() + o_b.sum()).backward()
        return counter.get_total_flops()

    want = flops(cross_attention.reference)
    assert want == 3 * 8 * 2 * 2 * 11 * 7 * 16
    assert flops(lambda *a: cross_attention_op.fused(*a, backend="reference")) == want


def test_the_top_level_kernels_name_is_hugging_faces_or_fba_kernels_itself():
    """With the checkout's root on sys.path this folder is importable as ``kernels`` too (transformers imports that
    name for Hugging Face's package of that name): it must give Hugging Face's package where one is installed
    (transformers imports names from it), else fba.kernels itself, never a 2nd copy whose custom ops replace the
    first ones and leave fba.kernels calling a dropped dispatcher entry. A subprocess: the bug would break every
    later op call of this test process."""
    code = """
import importlib, importlib.machinery, os, sys, torch
import fba.kernels as fk
op = fk.cross_attention_op.cross_attention_with_stats
root = os.getcwd()
theirs = importlib.machinery.PathFinder.find_spec("kernels", [p for p in sys.path if os.path.abspath(p or ".") != root])
top = importlib.import_module("kernels")
if theirs is None:
    assert top is fk, sys.modules["kernels"]
else:
    assert top is not fk and os.path.dirname(top.__file__) != os.path.join(root, "kernels"), top
    import transformers.integrations.hub_kernels  # imports names from Hugging Face's kernels
try:
    importlib.import_module("kernels.cross_attention_op")
except ImportError:
    pass
assert op._lib.m is not None and torch.ops.fba.cross_attention_with_stats.default is op._opoverload
q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 4, 8), torch.ones(1, 4, dtype=torch.bool)
fk.cross_attention_op.fused(q, k, k, k, k, v, v, backend="reference")
"""
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], check=True, timeout=120)
