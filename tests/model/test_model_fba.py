from __future__ import annotations

import pytest
import torch
from tiny_clip import IMAGE_SIZE, NUM_CLASSES, build_tiny

from fba.config import ConfigError, LossConfig, ModelConfig, load_config
from fba.losses import FBALoss
from fba.model import TextFeatures, build_model, select_feature
from fba.model.cross_modal import CrossModalModule
from fba.model.text import TextEncoder

WIDTH = 128


@pytest.fixture(scope="module")
def model():
    return build_tiny()


def test_forward_shapes_and_dtypes(model, images, captions):
    model.train()
    out = model(images, *captions)
    features = ["cls", "fg_img", "fg_txt", "bg_img", "bg_txt"]
    logits = ["cls_logits", "fg_img_logits", "fg_txt_logits"]
    assert set(out) == {*features, *logits, "pool_mask"}
    for key in features:
        assert out[key].shape == (4, WIDTH) and out[key].dtype == torch.float32, key
    for key in logits:
        assert out[key].shape == (4, NUM_CLASSES), key
    assert out["pool_mask"].shape == (4, 77)


def test_extract(model, images, captions):
    model.eval()
    with torch.no_grad():
        full = model.extract(images, captions)
        image_only = model.extract(images)
        cls = model.backbone(images)[:, 0]
    assert full.shape == (4, 3 * WIDTH) and image_only.shape == (4, WIDTH)
    norms = full.view(4, 3, WIDTH).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(4, 3))
    torch.testing.assert_close(full[:, :WIDTH], image_only)
    want = torch.nn.functional.normalize(model.head.bn(cls), dim=-1)  # post-BN CLS in eval mode
    torch.testing.assert_close(image_only, want)
    assert model.feature_dim(True) == 3 * WIDTH and model.feature_dim(False) == WIDTH
    maps = model.attention_maps(images, *captions)
    assert maps[0].shape == (4, 7, 77) and maps[1].shape == (4, 7, 77)


def test_text_feature_is_the_caption_part_and_select_feature_slices_the_full_one(model, images, captions):
    model.eval()
    with torch.no_grad():
        full = model.extract(images, captions)
        text = model.extract(images, captions, feature="text")
        image = model.extract(images, captions, feature="image")
        out = model(images, *captions)  # pre-BN features; in eval mode BN uses the running statistics
    want_text = torch.cat([torch.nn.functional.normalize(model.head_fg_img.bn(out["fg_img"]), dim=-1),
                           torch.nn.functional.normalize(model.head_fg_txt.bn(out["fg_txt"]), dim=-1)], dim=-1)
    assert text.shape == (4, 2 * WIDTH) and model.feature_dim(True, "text") == 2 * WIDTH
    torch.testing.assert_close(text, want_text)
    torch.testing.assert_close(image, model.extract(images))
    for kind, want in (("full", full), ("image", image), ("text", text)):
        torch.testing.assert_close(select_feature(full, kind), want)
    with pytest.raises(ValueError, match="needs captions"):
        model.extract(images, feature="text")
    with pytest.raises(ValueError, match="unknown retrieval feature 'caption'"):
        select_feature(full, "caption")


def test_token_ids_and_text_features_give_the_same_outputs(model, images, captions):
    model.eval()
    fg, bg = captions
    with torch.no_grad():
        a = model(images, fg, bg)
        b = model(images, model.text_encoder(fg), model.text_encoder(bg))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_padding_token_ids_change_nothing(model, images, captions):
    model.eval()
    fg, bg = captions
    noisy = fg.clone()
    pad = torch.arange(77)[None] > fg.argmax(-1)[:, None]
    noisy[pad] = torch.randint(1, 49000, (int(pad.sum()),))
    with torch.no_grad():
        a, b = model(images, fg, bg), model(images, noisy, bg)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_text_tower_frozen_through_training(images, captions):
    model = build_tiny()
    frozen = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.text_encoder.parameters()}
    assert id(model.head.bn.bias) not in trainable and id(model.head.bn.weight) in trainable
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    model.train()
    assert not model.text_encoder.training and model.cross_modal.training
    loss, _ = FBALoss(LossConfig(), ModelConfig(arch="tiny"))(model(images, *captions), torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert not any(p.requires_grad or p.grad is not None for p in model.text_encoder.parameters())
    assert model.cross_modal.text_in.weight.grad is not None and model.backbone.visual.conv1.weight.grad is not None
    opt.step()
    for key, value in model.text_encoder.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert torch.equal(model.head.bn.bias, torch.zeros(WIDTH))


def test_baseline_has_no_cross_modal_parts(images):
    model = build_tiny(cross_modal=False, diversity=False, pooling=False)
    assert model.text_encoder is None and model.cross_modal is None
    assert not any(isinstance(m, (TextEncoder, CrossModalModule)) for m in model.modules())
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_head = sum(p.numel() for p in model.head.parameters())
    assert sum(p.numel() for p in model.parameters()) == n_backbone + n_head
    model.eval()
    with torch.no_grad():
        out = model(images)
        assert set(out) == {"cls", "cls_logits"}
        torch.testing.assert_close(out["cls"], model.backbone(images)[:, 0])
        assert model.extract(images).shape == (4, WIDTH)


def test_ablation_switch_errors_are_config_errors():
    with pytest.raises(ConfigError, match="need model.cross_modal=true"):
        load_config(None, ["model.cross_modal=false"])
    with pytest.raises(ConfigError, match="model.kernel: must be one of auto, reference, triton, cuda, got 'magic'"):
        load_config(None, ["model.kernel=magic"])


def test_fg_only_model_runs_one_branch(images, captions):
    model = build_tiny(diversity=False, pooling=False).train()
    out = model(images, captions[0], None)
    assert set(out) == {"cls", "cls_logits", "fg_img", "fg_img_logits", "fg_txt", "fg_txt_logits"}
    with pytest.raises(ValueError, match="needs the fg captions"):
        model(images)


def test_text_cache_through_the_model(tmp_path):
    model = build_tiny(text_cache=str(tmp_path))
    feats = model.encode_captions(["a man", "a tree"])
    assert isinstance(feats, TextFeatures) and feats.states.dtype == torch.float16
    assert any(tmp_path.rglob("*.safetensors"))


def test_pretrained_model_loads_both_towers(clip_checkpoint):
    clip, path = clip_checkpoint
    model = build_model(ModelConfig(arch="tiny", pretrained=str(path)), NUM_CLASSES, IMAGE_SIZE)
    torch.testing.assert_close(model.backbone.visual.conv1.weight, clip.visual.conv1.weight)
    torch.testing.assert_close(model.text_encoder.tower.ln_final.weight, clip.ln_final.weight)


@pytest.mark.parametrize("switches", [
    dict(cross_modal=False, diversity=False, pooling=False),
    dict(),
])
def test_a_few_steps_drive_the_loss_down(switches, images, captions):
    torch.manual_seed(0)
    model = build_tiny(**switches).train()
    criterion = FBALoss(LossConfig(), ModelConfig(arch="tiny", **switches))
    pids = torch.tensor([0, 0, 1, 1])
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-4)
    fg, bg = (model.text_encoder(c) for c in captions) if model.text_encoder is not None else captions
    losses = []
    for _ in range(6):
        total, parts = criterion(model(images, fg, bg), pids)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(not v.requires_grad for v in parts.values())
