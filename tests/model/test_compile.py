"""torch.compile and torch.export of the tiny FBA through the custom op fba::cross_attention_with_stats (CPU: the
op's PyTorch kernels inside): no graph breaks, compiled = eager in outputs and gradients, export with the op or
decomposed."""
from __future__ import annotations

import pytest
import torch
from tiny_clip import IMAGE_SIZE, build_tiny

from fba import kernels
from fba.config import Config
from fba.losses import FBALoss
from fba.model import tokenize

OP = "fba.cross_attention_with_stats"


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    fg = tokenize(["a man in a red jacket", "a woman", "a child with a bag", "a person in blue jeans"])
    bg = tokenize(["a car behind", "a tree and a bench", "a glass door", "a crowd and a bus partly covering"])
    return torch.randn(4, 3, *IMAGE_SIZE, generator=gen), fg, bg, torch.tensor([0, 0, 1, 1])


def make(pool_grad: bool = True):
    """The tiny FBA with peaked cross-attention: its pooling mask min-max scales the column similarities, which
    multiplies rounding differences by 1 / (max s - min s); near-uniform random attention would make that huge."""
    torch.manual_seed(0)
    model = build_tiny(pool_grad=pool_grad)
    with torch.no_grad():
        model.cross_modal.cross.q_proj.weight.mul_(10)
        model.cross_modal.cross.kv_proj.weight.mul_(10)
    cfg = Config()
    cfg.model.pool_grad = pool_grad
    return model, FBALoss(cfg.loss, cfg.model)


def train_loss(model, criterion):
    def step(images, fg, bg, pids):
        outputs = model(images, fg, bg)
        return criterion({k: v.float() for k, v in outputs.items()}, pids)[0]
    return step


def graphs_code(explained) -> str:
    return "\n".join(g.code for g in explained.graphs)


def test_train_step_traces_whole_with_the_op(batch):
    model, criterion = make()
    explained = torch._dynamo.explain(train_loss(model, criterion))(*batch)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1 and OP in graphs_code(explained)


@pytest.mark.parametrize("with_captions", [False, True])
def test_extract_traces_whole(batch, with_captions):
    model, _ = make()
    model.eval()
    images, fg, bg, _ = batch
    explained = torch._dynamo.explain(model.extract)(images, (fg, bg) if with_captions else None)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert (OP in graphs_code(explained)) == with_captions


@pytest.mark.slow
def test_compiled_train_step_equals_eager_in_loss_and_gradients(batch):
    """fullgraph compile (aot_eager: the op's registered backward through AOTAutograd) against eager."""
    model, criterion = make()
    step = train_loss(model, criterion)
    params = [p for p in model.parameters() if p.requires_grad]
    eager = step(*batch)
    eager_grads = torch.autograd.grad(eager, params, allow_unused=True)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(*batch)
    compiled_grads = torch.autograd.grad(compiled, params, allow_unused=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    checked = 0
    for e, c in zip(eager_grads, compiled_grads):
        assert (e is None) == (c is None)
        if e is not None:
            torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-6)
            checked += 1
    q_grad = next(g for p, g in zip(params, eager_grads) if p is model.cross_modal.cross.q_proj.weight)
    assert checked > 10 and q_grad.abs().sum() > 0


def test_compiled_extract_equals_eager(batch):
    """aot_eager rather than Inductor: Inductor's C++ build of this graph takes minutes on 2 CPU cores; the GPU
    suite measures Inductor (benchmarks/gpu_suite.py)."""
    model, _ = make()
    model.eval()
    images, fg, bg, _ = batch
    with torch.no_grad():
        want = model.extract(images, (fg, bg))
        got = torch.compile(model.extract, backend="aot_eager", fullgraph=True)(images, (fg, bg))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class Embed(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, fg, bg):
        return self.model.extract(images, (fg, bg))


def test_torch_export_keeps_the_op_or_decomposes_it(batch):
    model, _ = make()
    model.eval()
    images, fg, bg, _ = batch
    wrapper = Embed(model).eval()
    with torch.no_grad():
        want = wrapper(images, fg, bg)
        with_op = torch.export.export(wrapper, (images, fg, bg))
        assert OP in str(with_op.graph_module.code)
        torch.testing.assert_close(with_op.module()(images, fg, bg), want, rtol=1e-5, atol=1e-6)
        with kernels.decomposed():
            plain = torch.export.export(wrapper, (images, fg, bg))
        assert "fba." not in str(plain.graph_module.code)
        torch.testing.assert_close(plain.module()(images, fg, bg), want, rtol=1e-5, atol=1e-6)
