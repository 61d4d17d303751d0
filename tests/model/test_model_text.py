from __future__ import annotations

import pytest
import torch

from fba.model.backbone import get_arch, load_clip_checkpoint
from fba.model.text import TextEncoder, TextFeatureCache, TextFeatures, tokenize

TINY = get_arch("tiny")
EOT = 49407


def test_tokenize_shapes_and_truncation_keeps_eot():
    tokens = tokenize(["a man", "word " * 200])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.int64
    assert tokens[0, 0] == 49406 and tokens[0].argmax() == 3 and tokens[0, 3] == EOT and tokens[0, 4:].eq(0).all()
    assert tokens[1, -1] == EOT
    with pytest.raises(TypeError):
        tokenize("one string")


def test_text_tower_equals_open_clip_encode_text(clip_checkpoint):
    clip, path = clip_checkpoint
    encoder = TextEncoder(TINY, load_clip_checkpoint(path))
    tokens = tokenize(["a man in a red jacket", "a tree", ""])
    feats = encoder(tokens)
    assert feats.states.shape == (3, 77, 64)
    assert feats.eot.tolist() == tokens.argmax(-1).tolist()
    assert feats.valid.sum(-1).tolist() == (feats.eot + 1).tolist()
    with torch.no_grad():
        pooled = clip.encode_text(tokens)
    torch.testing.assert_close(feats.states[torch.arange(3), feats.eot], pooled, rtol=1e-5, atol=1e-5)


def test_padding_ids_change_nothing_at_valid_positions():
    encoder = TextEncoder(TINY)
    tokens = tokenize(["a woman with a white bag", "a bus"])
    noisy = tokens.clone()
    pad = ~TextFeatures.from_eot(torch.zeros(2, 77, 1), tokens.argmax(-1)).valid
    noisy[pad] = torch.randint(1, 49000, (int(pad.sum()),))
    a, b = encoder(tokens), encoder(noisy)
    assert torch.equal(a.eot, b.eot) and torch.equal(a.valid, b.valid)
    torch.testing.assert_close(a.states[a.valid], b.states[b.valid])


def test_tower_is_frozen_and_stays_in_eval_mode():
    encoder = TextEncoder(TINY)
    parent = torch.nn.Sequential(encoder, torch.nn.Linear(2, 2)).train()
    assert not encoder.training and not encoder.tower.transformer.training
    assert not any(p.requires_grad for p in encoder.parameters())
    feats = encoder(tokenize(["x"]))
    assert not feats.states.requires_grad and feats.states.grad_fn is None
    with pytest.raises(ValueError, match=r"\[n, 77\]"):
        encoder(torch.zeros(2, 10, dtype=torch.int64))
    assert parent[1].training


def test_identity_follows_the_weights():
    a, b = TextEncoder(TINY), TextEncoder(TINY)
    assert a.identity != b.identity  # different random weights
    b.load_state_dict(a.state_dict())
    assert a.identity == b.identity
    assert a.identity.startswith("tiny-")
    fp32 = a.identity
    a.to(torch.bfloat16)  # new tensors, no version bump
    assert a.identity != fp32
    c = TextEncoder(TINY).to(torch.bfloat16)
    c.load_state_dict(a.state_dict())
    assert c.identity == a.identity


def test_cache_second_call_reads_from_disk(tmp_path):
    encoder = TextEncoder(TINY)
    captions = ["a man in a red jacket", "a tree and a bench", "a man in a red jacket", "a child"]
    first = TextFeatureCache(tmp_path).get_or_compute(captions, encoder, batch_size=2)
    assert first.states.dtype == torch.float16
    shards = list((tmp_path / encoder.identity).glob("*.safetensors"))
    assert len(shards) == 2  # three distinct captions in batches of two
    direct = encoder.encode(captions)
    assert torch.equal(first.eot, direct.eot) and torch.equal(first.valid, direct.valid)
    torch.testing.assert_close(first.states.float()[first.valid], direct.states[direct.valid], rtol=2e-3, atol=2e-3)
    assert first.states[~first.valid].eq(0).all()  # rows after EOT are not stored

    def no_encoding(*args, **kwargs):
        raise AssertionError("the second call must not run the tower")

    encoder.encode = no_encoding
    second = TextFeatureCache(tmp_path).get_or_compute(list(reversed(captions)), encoder)
    for i, j in enumerate(reversed(range(4))):
        assert torch.equal(second.states[i], first.states[j]) and second.eot[i] == first.eot[j]


def test_cache_encodes_only_missing_captions(tmp_path):
    encoder = TextEncoder(TINY)
    cache = TextFeatureCache(tmp_path)
    cache.get_or_compute(["a", "b"], encoder)
    seen = []
    original = encoder.encode
    encoder.encode = lambda captions: seen.extend(captions) or original(captions)
    out = cache.get_or_compute(["b", "c", "a"], encoder)
    assert seen == ["c"] and out.states.shape == (3, 77, 64)


def test_unreadable_shard_is_named(tmp_path):
    encoder = TextEncoder(TINY)
    folder = tmp_path / encoder.identity
    folder.mkdir(parents=True)
    (folder / "broken.safetensors").write_bytes(b"not a shard")
    with pytest.raises(ValueError, match="broken.safetensors"):
        TextFeatureCache(tmp_path).get_or_compute(["a"], encoder)
