"""fba.model.flops against torch's FlopCounterMode on the tiny model (SDPA on its math path: every matmul is seen)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fba.config import ModelConfig
from fba.model.flops import extract_flops, spec_peak_tflops, training_flops
from fba.model import build_model, tokenize

IMAGE_SIZE = (64, 32)  # 5 x 2 patches at stride 12
NUM_CLASSES = 7
BATCH = 2
CASES = {  # name: (model switches, cached text features)
    "full": ({}, False),
    "full_cached_text": ({}, True),
    "fg_only": ({"diversity": False, "pooling": False}, False),
    "baseline": ({"cross_modal": False, "diversity": False, "pooling": False}, False),
    "stride16_pool_grad": ({"stride": 16, "pool_grad": True}, True),
}


def _model(**switches):
    cfg = ModelConfig(arch="tiny", kernel="reference", **switches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return cfg, build_model(cfg, NUM_CLASSES, IMAGE_SIZE)


def _inputs():
    images = torch.randn(BATCH, 3, *IMAGE_SIZE)
    fg = tokenize(["a man in a red jacket", "a woman with a bag and a blue hat"])
    bg = tokenize(["a car", "trees and a bench behind her"])
    return images, fg, bg


def _module_flops(counter: FlopCounterMode, name: str) -> int:
    return sum(counter.get_flop_counts().get(name, {}).values())


@pytest.mark.parametrize("case", list(CASES))
def test_training_flops_match_the_counter(case):
    switches, cached_text = CASES[case]
    cfg, model = _model(**switches)
    images, fg, bg = _inputs()
    if cached_text:
        fg, bg = model.text_encoder(fg), model.text_encoder(bg)
    model.train()
    with sdpa_kernel(SDPBackend.MATH):
        forward = FlopCounterMode(display=False)
        with forward:
            outputs = model(images, fg, bg)
        loss = sum(v.float().sum() for v in outputs.values() if v.requires_grad)
        backward = FlopCounterMode(display=False)
        with backward:
            loss.backward()
    expected = training_flops(cfg, IMAGE_SIZE, NUM_CLASSES, cached_text=cached_text)
    assert _module_flops(forward, "FBA.backbone") == BATCH * expected.part("backbone").forward
    heads = sum(_module_flops(forward, f"FBA.{h}") for h in ("head", "head_fg_img", "head_fg_txt"))
    assert heads == BATCH * expected.part("heads").forward
    if cfg.cross_modal:
        assert _module_flops(forward, "FBA.cross_modal") == BATCH * expected.part("cross_modal").forward
        assert _module_flops(forward, "FBA.text_encoder") == BATCH * expected.part("text_tower").forward
    else:
        assert [p.name for p in expected.parts] == ["backbone", "heads"]
    assert forward.get_total_flops() == BATCH * expected.forward
    assert backward.get_total_flops() == BATCH * expected.backward
    assert expected.part("backbone").backward < 2 * expected.part("backbone").forward  # the conv's input needs no grad


@pytest.mark.parametrize("with_captions", [True, False])
def test_extract_flops_match_the_counter(with_captions):
    cfg, model = _model()
    images, fg, bg = _inputs()
    model.eval()
    # grad mode on: in eval + no_grad nn.MultiheadAttention takes its fused fast path, which the counter cannot see
    with sdpa_kernel(SDPBackend.MATH):
        counter = FlopCounterMode(display=False)
        with counter:
            model.extract(images, (fg, bg) if with_captions else None)
    expected = extract_flops(cfg, IMAGE_SIZE, with_captions=with_captions)
    assert counter.get_total_flops() == BATCH * expected.total
    assert expected.backward == 0


def test_paper_size_counts_and_peaks():
    flops = training_flops(ModelConfig(), (384, 128), 751)
    # 311 tokens: 12 x (24 * 311 * 768^2 + 4 * 311^2 * 768) + the 0.37 GFLOP patch conv (docs/performance.md)
    assert flops.part("backbone").forward == pytest.approx(56.76e9, rel=1e-3)
    assert flops.part("cross_modal").forward == pytest.approx(56.76e9, rel=1e-3)
    assert flops.part("text_tower").forward == pytest.approx(2 * 6.0e9, rel=1e-2)
    cached = training_flops(ModelConfig(), (384, 128), 751, cached_text=True)
    assert flops.total - cached.total == pytest.approx(flops.part("text_tower").forward)
    smaller = training_flops(ModelConfig(), (256, 128), 751)
    assert smaller.part("backbone").forward < flops.part("backbone").forward
    assert set(flops.as_dict()) == {"backbone", "cross_modal", "heads", "text_tower", "total"}
    with pytest.raises(KeyError, match="parts"):
        flops.part("decoder")
    assert spec_peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert spec_peak_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert spec_peak_tflops("AMD EPYC 7B13") is None
