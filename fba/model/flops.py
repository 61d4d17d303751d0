"""Analytic FLOP counts of FBA per image, by part, and the peak rates model FLOP utilisation (MFU) is taken against.

Why by hand: MFU needs the FLOPs the *model* asks for, whatever a kernel does to get them (flash attention
recomputes scores in its backward, a fused kernel may skip a padded tile); a profiler's count changes with the
kernel, the model's does not. ``tests/test_flops.py`` checks these formulas against
``torch.utils.flop_counter.FlopCounterMode`` (SDPA forced to its math path so that every attention matmul is seen).

Conventions (those of MFU in the PaLM / Megatron papers):
- 1 multiply-add = 2 FLOP; only matmuls, convolutions and attention's two matmuls (QK^T, PV) count. LayerNorm,
  softmax, GELU, BatchNorm, the pooling and the losses' B x B distances are left out (< 0.1 % here).
- Backward = 2 x forward for a matmul whose input needs a gradient (grad input + grad weight), 1 x forward
  for one whose input does not (the patch convolution on the images, the text ``Linear`` on frozen-tower
  features): only the weight gradient is computed there. Attention backward = 2 x its forward.
- The frozen text tower runs forward only, once per caption the step uses (2 per image with the bg branch,
  1 without); with cached text features (``TextFeatures`` in, ``model.text_cache``) it costs nothing.
- Differential pooling's weighted sum over the caption rows (2 M D) is counted with the cross-modal module.
- Counts are per image: a batch of B costs B times as much (attention here is within one image's sequences).
"""
from __future__ import annotations

from dataclasses import dataclass

from fba.config import ModelConfig
from fba.model.backbone import ClipArch, get_arch, patch_grid

__all__ = [
    "ModelFlops",
    "PartFlops",
    "DATASHEET_PEAK_BF16_TFLOPS",
    "extract_flops",
    "spec_peak_tflops",
    "training_flops",
]

MLP_RATIO = 4


@dataclass(frozen=True)
class PartFlops:
    """FLOP per image of one part of the model: forward and backward (0 when the part is frozen)."""

    name: str
    forward: float
    backward: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward


@dataclass(frozen=True)
class ModelFlops:
    """The parts of one use of the model (a training step or ``extract``), per image."""

    parts: tuple[PartFlops, ...]

    def part(self, name: str) -> PartFlops:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(f"no part {name!r}; parts: {', '.join(p.name for p in self.parts)}")

    @property
    def forward(self) -> float:
        return sum(p.forward for p in self.parts)

    @property
    def backward(self) -> float:
        return sum(p.backward for p in self.parts)

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def as_dict(self) -> dict[str, dict[str, float]]:
        """GFLOP per image by part, plus the total: what the benchmarks store beside their timings."""
        rows = {p.name: {"forward_gflop": p.forward / 1e9, "backward_gflop": p.backward / 1e9,
                         "total_gflop": p.total / 1e9} for p in self.parts}
        rows["total"] = {"forward_gflop": self.forward / 1e9, "backward_gflop": self.backward / 1e9,
                         "total_gflop": self.total / 1e9}
        return rows


def _layer_matmuls(rows: float, width: int) -> float:
    """QKV, out projection and the 4x MLP of one transformer layer over ``rows`` tokens: 24 rows D^2."""
    return 2 * rows * (3 * width * width + width * width + 2 * MLP_RATIO * width * width)


def _attention(queries: int, keys: int, width: int) -> float:
    """QK^T and PV of all heads for one sequence: 4 Nq Nk D (independent of the head count)."""
    return 4 * queries * keys * width


def _image_tokens(arch: ClipArch, image_size: tuple[int, int], stride: int) -> int:
    rows, cols = patch_grid(image_size, arch.vision.patch_size, stride)
    return 1 + rows * cols


def _backbone_forward(arch: ClipArch, image_size: tuple[int, int], stride: int) -> tuple[float, float]:
    """(patch convolution, transformer) FLOP of the visual tower for one image."""
    spec = arch.vision
    tokens = _image_tokens(arch, image_size, stride)
    patches = tokens - 1
    conv = 2 * patches * spec.width * 3 * spec.patch_size**2
    layers = spec.layers * (_layer_matmuls(tokens, spec.width) + _attention(tokens, tokens, spec.width))
    return conv, layers


def _text_tower_forward(arch: ClipArch) -> float:
    """One caption through the frozen tower: all context positions (the causal mask halves no matmul)."""
    spec = arch.text
    m = spec.context_length
    layers = spec.layers * (_layer_matmuls(m, spec.width) + _attention(m, m, spec.width))
    return layers + 2 * m * spec.width * arch.embed_dim


def _cross_modal_forward(arch: ClipArch, tokens: int, branches: int, sa_layers: int) -> tuple[float, float, float]:
    """(text Linear, CA + SA matmuls, attention) of the four-stream module for one image and ``branches`` captions.

    CA projects the image rows once and each caption's rows once (Q on all of them, K/V on all of them); its
    out projection and MLP run on every stream row, as does each SA layer.
    """
    width = arch.vision.width
    m = arch.text.context_length
    text_in = 2 * branches * m * arch.embed_dim * width
    input_rows = tokens + branches * m
    stream_rows = branches * (tokens + m)
    ca = 2 * input_rows * 3 * width * width + 2 * stream_rows * (width * width + 2 * MLP_RATIO * width * width)
    sa = sa_layers * _layer_matmuls(stream_rows, width)
    attention = branches * (
        _attention(tokens, m, width) + _attention(m, tokens, width)  # CA, both directions
        + sa_layers * (_attention(tokens, tokens, width) + _attention(m, m, width))  # SA, image and caption streams
    )
    return text_in, ca + sa, attention


def _pooling(arch: ClipArch, cfg: ModelConfig) -> float:
    """The pooled F_f^T: a weighted sum of the M caption rows."""
    return 2 * arch.text.context_length * arch.vision.width if cfg.pooling else 0.0


def _branches(cfg: ModelConfig, training: bool) -> int:
    if not cfg.cross_modal:
        return 0
    needs_bg = cfg.pooling or (training and cfg.diversity)
    return 2 if needs_bg else 1


def training_flops(
    cfg: ModelConfig, image_size: tuple[int, int], num_classes: int, cached_text: bool = False
) -> ModelFlops:
    """FLOP per image of one training step of ``FBA.forward`` + backward (parts: backbone, cross_modal, heads,
    text_tower). ``cached_text``: the step gets ``TextFeatures`` instead of token ids (no tower in the step)."""
    arch = get_arch(cfg.arch)
    conv, layers = _backbone_forward(arch, image_size, cfg.stride)
    parts = [PartFlops("backbone", conv + layers, conv + 2 * layers)]
    branches = _branches(cfg, training=True)
    heads = 1 + (2 if branches else 0)
    classifier = 2 * arch.vision.width * num_classes
    if branches:
        tokens = _image_tokens(arch, image_size, cfg.stride)
        text_in, matmuls, attention = _cross_modal_forward(arch, tokens, branches, cfg.cross_layers)
        pool = _pooling(arch, cfg)
        # the pooling mask gets a gradient only with pool_grad; the pooled rows always do
        pool_backward = pool * (2 if cfg.pool_grad else 1)
        parts.append(PartFlops("cross_modal", text_in + matmuls + attention + pool,
                               text_in + 2 * (matmuls + attention) + pool_backward))
    parts.append(PartFlops("heads", heads * classifier, 2 * heads * classifier))
    if branches:
        parts.append(PartFlops("text_tower", 0.0 if cached_text else branches * _text_tower_forward(arch)))
    return ModelFlops(tuple(parts))


def extract_flops(
    cfg: ModelConfig, image_size: tuple[int, int], with_captions: bool = True, cached_text: bool = False
) -> ModelFlops:
    """FLOP per image of ``FBA.extract`` (forward only; the BNNecks' BatchNorm only, no classifier)."""
    arch = get_arch(cfg.arch)
    conv, layers = _backbone_forward(arch, image_size, cfg.stride)
    parts = [PartFlops("backbone", conv + layers)]
    branches = _branches(cfg, training=False) if with_captions else 0
    if branches:
        tokens = _image_tokens(arch, image_size, cfg.stride)
        forward = sum(_cross_modal_forward(arch, tokens, branches, cfg.cross_layers)) + _pooling(arch, cfg)
        parts.append(PartFlops("cross_modal", forward))
        parts.append(PartFlops("text_tower", 0.0 if cached_text else branches * _text_tower_forward(arch)))
    return ModelFlops(tuple(parts))


# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity), matched by device name.
DATASHEET_PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM5 (the name CUDA reports is "NVIDIA H100 80GB HBM3")
    "H200": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def spec_peak_tflops(device_name: str) -> float | None:
    """The data-sheet bf16 dense peak of a CUDA device by name (longest matching key), None when unknown."""
    matches = [key for key in DATASHEET_PEAK_BF16_TFLOPS if key.lower() in device_name.lower()]
    if not matches:
        return None
    return DATASHEET_PEAK_BF16_TFLOPS[max(matches, key=len)]
