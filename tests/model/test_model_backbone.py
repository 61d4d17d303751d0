from __future__ import annotations

import copy

import pytest
import torch

from fba.model.backbone import (
    build_backbone,
    get_arch,
    load_clip_checkpoint,
    patch_grid,
    resize_positional_embedding,
)

from tiny_clip import tiny_open_clip

TINY = get_arch("tiny")


def test_patch_grid_matches_spec():
    assert patch_grid((384, 128), 16, 12) == (31, 10)
    assert patch_grid((256, 128), 16, 12) == (21, 10)
    assert patch_grid((224, 224), 16, 16) == (14, 14)
    assert patch_grid((16, 16), 16, 12) == (1, 1)
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        patch_grid((15, 128), 16, 12)


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(ValueError, match="ViT-B-16, tiny"):
        get_arch("ViT-L-14")


def test_stride16_224_backbone_equals_open_clip_visual(clip_checkpoint):
    """Loaded from an open_clip model's state dict, the backbone reproduces open_clip's own visual forward."""
    clip, path = clip_checkpoint
    backbone = build_backbone(TINY, (224, 224), stride=16, checkpoint=load_clip_checkpoint(path)).eval()
    visual = copy.deepcopy(clip.visual)
    visual.output_tokens = True
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled, tokens = visual(images)
        ours = backbone(images)
    assert ours.shape == (2, 197, 128)
    torch.testing.assert_close(ours[:, 1:], tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[:, 0] @ clip.visual.proj, pooled, rtol=1e-5, atol=1e-5)


def test_stride12_grid_and_positional_resize(clip_checkpoint):
    clip, path = clip_checkpoint
    backbone = build_backbone(TINY, (64, 40), stride=12, checkpoint=load_clip_checkpoint(path))
    assert backbone.grid == (5, 3) and backbone.num_tokens == 16
    assert backbone.visual.conv1.stride == (12, 12)
    pos = backbone.visual.positional_embedding
    assert pos.shape == (16, 128)
    torch.testing.assert_close(pos[0], clip.visual.positional_embedding[0])  # CLS position kept
    out = backbone(torch.randn(2, 3, 64, 40))
    assert out.shape == (2, 16, 128)
    assert backbone.visual.proj is None


def test_positional_resize_keeps_row_major_layout():
    """Channel 0 encodes the row, channel 1 the column: after resizing, rows still vary only along rows."""
    rows, cols = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    grid = torch.stack([rows, cols], dim=-1).reshape(196, 2)
    pos = torch.cat([torch.tensor([[-7.0, -7.0]]), grid])
    out = resize_positional_embedding(pos, (14, 14), (31, 10))
    assert out.shape == (1 + 310, 2)
    assert out[0].tolist() == [-7.0, -7.0]
    new = out[1:].reshape(31, 10, 2)
    torch.testing.assert_close(new[:, :, 0], new[:, :1, 0].expand(31, 10))  # the row code: constant along a row
    torch.testing.assert_close(new[:, :, 1], new[:1, :, 1].expand(31, 10))  # the column code: along a column
    assert torch.all(new[1:, 0, 0] > new[:-1, 0, 0]) and torch.all(new[0, 1:, 1] > new[0, :-1, 1])
    assert new[0, 0, 0] >= 0 and new[-1, 0, 0] <= 13


def test_wrong_image_size_is_a_clear_error():
    backbone = build_backbone(TINY, (48, 32), stride=12)
    with pytest.raises(ValueError, match="built for 48x32"):
        backbone(torch.randn(1, 3, 64, 32))


def _openai_jit_archive(state: dict, path):
    """A TorchScript archive holding the weights under OpenAI's names, fp16 like the real release."""

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for key, value in state.items():
                module, *parts = self, *key.split(".")
                for part in parts[:-1]:
                    if not hasattr(module, part):
                        module.add_module(part, torch.nn.Module())
                    module = getattr(module, part)
                module.register_buffer(parts[-1], value.clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(Holder()), str(path))


@pytest.mark.parametrize("layout", ["open_clip", "custom_text", "wrapped", "safetensors", "openai_jit"])
def test_pretrained_round_trip(layout, tmp_path):
    clip = tiny_open_clip(seed=3)
    state = clip.state_dict()
    path = tmp_path / "weights.pt"
    if layout == "open_clip":
        torch.save(state, path)
    elif layout == "custom_text":  # open_clip CustomTextCLIP: the text tower under "text."
        text_keys = ("transformer.", "token_embedding", "positional_embedding", "ln_final", "text_projection")
        torch.save({("text." + k if k.startswith(text_keys) else k): v for k, v in state.items()}, path)
    elif layout == "wrapped":  # a training checkpoint: {"state_dict": {"module.<key>": ...}}
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, path)
    elif layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        state = {k: v.half() for k, v in state.items()}
        state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
        _openai_jit_archive(state, path)
    ckpt = load_clip_checkpoint(path)
    assert all(v.dtype == torch.float32 for v in (*ckpt.visual.values(), *ckpt.text.values()))
    backbone = build_backbone(TINY, (224, 224), stride=16, checkpoint=ckpt)
    tol = dict(rtol=1e-3, atol=1e-3) if layout == "openai_jit" else dict(rtol=0, atol=0)
    for name, value in clip.visual.state_dict().items():
        if name != "proj":
            torch.testing.assert_close(backbone.visual.state_dict()[name], value, **tol)
    from fba.model.text import TextEncoder

    encoder = TextEncoder(TINY, ckpt)
    torch.testing.assert_close(encoder.tower.text_projection, clip.text_projection, **tol)
    torch.testing.assert_close(encoder.tower.token_embedding.weight, clip.token_embedding.weight, **tol)


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_clip_checkpoint(tmp_path / "nothere.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, junk)
    with pytest.raises(ValueError, match="junk.pt.*unexpected key 'fc.weight'"):
        load_clip_checkpoint(junk)
    state = tiny_open_clip().state_dict()
    state["visual.conv1.weight"] = state["visual.conv1.weight"][:64]
    wrong = tmp_path / "wrong.pt"
    torch.save(state, wrong)
    with pytest.raises(ValueError, match="wrong.pt: the visual weights do not fit"):
        build_backbone(TINY, (224, 224), 16, load_clip_checkpoint(wrong))
