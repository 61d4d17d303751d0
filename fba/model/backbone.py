"""CLIP architectures as data, local checkpoint loading, and the visual backbone with overlapping patches.

The visual tower is open_clip's own ``VisionTransformer``, built at its pre-training size (224, a 14x14 grid)
so that a CLIP checkpoint loads strictly; only then is the patch stride changed and the positional grid
resized (bilinear, CLS position kept, as TransReID does). Keeping open_clip's module tree keeps the
``visual.*`` key names of every CLIP checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, VisionTransformer
from safetensors.torch import load_file
from torch import nn

from fba.utils.safe_load import is_torchscript, read_torchscript_tensors, safe_torch_load

__all__ = [
    "ARCHS",
    "ClipArch",
    "ClipCheckpoint",
    "TextSpec",
    "VisionSpec",
    "VisualBackbone",
    "build_backbone",
    "get_arch",
    "load_clip_checkpoint",
    "patch_grid",
]


@dataclass(frozen=True)
class VisionSpec:
    width: int
    layers: int
    heads: int
    patch_size: int = 16
    pretrain_size: int = 224  # the positional grid of a checkpoint is pretrain_size // patch_size square


@dataclass(frozen=True)
class TextSpec:
    width: int
    layers: int
    heads: int
    context_length: int = 77
    vocab_size: int = 49408


@dataclass(frozen=True)
class ClipArch:
    """One CLIP model; ``quick_gelu`` because OpenAI's weights were trained with it (open_clip's ``-quickgelu``)."""

    name: str
    embed_dim: int
    vision: VisionSpec
    text: TextSpec
    quick_gelu: bool = True

    @property
    def act_layer(self) -> type[nn.Module]:
        return QuickGELU if self.quick_gelu else nn.GELU


ARCHS: dict[str, ClipArch] = {
    "ViT-B-16": ClipArch("ViT-B-16", 512, VisionSpec(768, 12, 12), TextSpec(512, 12, 8)),
    # Same code path at CPU-test size; vocabulary and context stay CLIP's so the real tokenizer works.
    "tiny": ClipArch("tiny", 64, VisionSpec(128, 2, 4), TextSpec(64, 2, 2)),
}


def get_arch(name: str) -> ClipArch:
    if name not in ARCHS:
        raise ValueError(f"unknown model.arch {name!r}; known: {', '.join(ARCHS)}")
    return ARCHS[name]


def patch_grid(image_size: tuple[int, int], patch_size: int, stride: int) -> tuple[int, int]:
    """Rows and columns of patches a ``patch_size`` convolution with ``stride`` gives on an H x W image."""
    height, width = image_size
    if height < patch_size or width < patch_size:
        raise ValueError(f"image size {height}x{width} is smaller than one {patch_size}x{patch_size} patch")
    if stride < 1:
        raise ValueError(f"patch stride must be >= 1, got {stride}")
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


@dataclass
class ClipCheckpoint:
    """A CLIP checkpoint split by tower, keys relative to each tower, fp32."""

    path: Path
    visual: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]


_TEXT_KEYS = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
_DROPPED_KEYS = ("input_resolution", "context_length", "vocab_size", "logit_scale", "logit_bias", "attn_mask")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if is_torchscript(path):  # the OpenAI release: a TorchScript archive of the whole CLIP model, read, never run
        return read_torchscript_tensors(path)
    obj = safe_torch_load(path, "model.pretrained")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a CLIP state dict (expected a mapping of names to tensors)")
    return obj


def load_clip_checkpoint(path: str | Path) -> ClipCheckpoint:
    """Read an open_clip state dict (any of its layouts) or OpenAI's JIT archive from a local file; never download.

    Accepted key layouts: OpenAI / open_clip ``CLIP`` (``visual.*`` and the text tower at top level),
    open_clip ``CustomTextCLIP`` (``text.*``), each optionally under ``state_dict`` and/or ``module.``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: CLIP weights file not found: {path}")
    state = _read_state_dict(path)
    visual: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("visual."):
            visual[key[len("visual."):]] = value.float()
        else:
            key = key.removeprefix("text.")
            if key.startswith(_TEXT_KEYS):
                text[key] = value.float()
            elif not key.startswith(_DROPPED_KEYS):
                raise ValueError(f"{path}: unexpected key {key!r}; is this a CLIP ViT checkpoint?")
    if not visual:
        raise ValueError(f"{path}: no 'visual.*' weights found; is this a CLIP ViT checkpoint?")
    return ClipCheckpoint(path, visual, text)


def load_tower(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: Path) -> None:
    """Strict load with an error that names the file and the mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: the {what} weights do not fit this architecture:\n{err}") from None


def build_visual_tower(arch: ClipArch) -> VisionTransformer:
    """open_clip's ViT at the checkpoint's geometry (224 px, stride = patch size)."""
    spec = arch.vision
    return VisionTransformer(
        image_size=spec.pretrain_size,
        patch_size=spec.patch_size,
        width=spec.width,
        layers=spec.layers,
        heads=spec.heads,
        mlp_ratio=4.0,
        output_dim=arch.embed_dim,
        act_layer=arch.act_layer,
    )


def resize_positional_embedding(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]):
    """[1 + Gh*Gw, D] -> [1 + gh*gw, D]: bilinear over the patch grid, the CLS position kept as is."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:1], pos[1:]
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)])


class VisualBackbone(nn.Module):
    """CLIP ViT returning every token after ``ln_post``: [B, 1 + N, width], CLS first; no projection to 512.

    The 16x16 patch convolution runs at ``stride`` (12 = overlapping patches as TransReID); the images must
    have the size the backbone was built for, since the positional grid was resized to it once.
    """

    def __init__(self, visual: VisionTransformer, image_size: tuple[int, int], stride: int):
        super().__init__()
        patch = visual.patch_size[0]
        old_grid = visual.grid_size
        self.grid = patch_grid(image_size, patch, stride)
        self.image_size = tuple(image_size)
        visual.conv1.stride = (stride, stride)
        visual.grid_size = self.grid
        visual.image_size = self.image_size
        visual.positional_embedding = nn.Parameter(
            resize_positional_embedding(visual.positional_embedding.detach(), old_grid, self.grid)
        )
        visual.proj = None  # the 768->512 projection is not used by FBA; keeping it would leave it gradient-less
        self.visual = visual
        self.width = visual.transformer.width

    @property
    def num_tokens(self) -> int:
        return 1 + self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"images are {images.shape[-2]}x{images.shape[-1]} but the backbone was built for "
                f"{self.image_size[0]}x{self.image_size[1]} (data.height/data.width must match)"
            )
        visual = self.visual
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        x = visual.transformer(x)
        return visual.ln_post(x)


def build_backbone(
    arch: ClipArch,
    image_size: tuple[int, int],
    stride: int = 12,
    checkpoint: ClipCheckpoint | None = None,
) -> VisualBackbone:
    """Build the ViT at 224 px, load the checkpoint's visual tower strictly, then move to ``stride`` and ``image_size``."""
    visual = build_visual_tower(arch)
    if checkpoint is not None:
        load_tower(visual, checkpoint.visual, "visual", checkpoint.path)
    return VisualBackbone(visual, image_size, stride)
