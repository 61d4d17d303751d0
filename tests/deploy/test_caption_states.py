"""``fba export --feature full --caption-input states``: the full feature's graph without the text tower, the tower
written beside it, run by the backends once per distinct caption; the features are those of the token-id export
and of ``fba embed``'s PyTorch path."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fba.cli import main
from fba.embed.backends import CaptionStates, OnnxRuntimeModel
from fba.errors import InputError
from fba.model.text import tokenize
from test_embed_backends import assert_same_file, embed


@pytest.fixture(scope="module")
def states_export(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("states")
    assert main(["export", "--checkpoint", str(checkpoint), "--feature", "full", "--caption-input", "states",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model-full-states.onnx", "model-text.onnx"]
    return out / "model-full-states.onnx"


BACKENDS = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fba_embed_with_a_states_export_writes_the_pytorch_file(checkpoint, states_export, image_folder, tmp_path,
                                                                backend):
    captions = ["--captions", str(image_folder / "captions.jsonl")]
    want = embed(tmp_path, "pt", checkpoint, image_folder, *captions)
    got = embed(tmp_path, backend, states_export, image_folder, "--backend", backend, *captions)
    assert_same_file(got, want)


def test_each_distinct_caption_runs_through_the_tower_once(states_export):
    model = OnnxRuntimeModel(states_export)
    images = torch.randint(0, 256, (6, 3, *model.image_size), dtype=torch.uint8)
    fg = tokenize(["a man in red", "a woman in blue", "a man in red", "a child", "a woman in blue", "a man in red"])
    bg = tokenize(["a street"] * 6)
    first = model(images, fg, bg)
    assert model.captions.encoded == 4  # 3 distinct fg captions and 1 bg caption
    again = model(images[:2], fg[:2], bg[:2])
    assert model.captions.encoded == 4  # all cached: the tower does not run
    np.testing.assert_array_equal(again, model(images[:2], fg[:2], bg[:2]))
    np.testing.assert_allclose(again, first[:2], atol=1e-5, rtol=0)  # fp32, batch 2 vs 6: reduction order only


def test_the_cache_is_bounded_and_keeps_the_recent_captions():
    calls = []

    def run(tokens):
        calls.append(len(tokens))
        return tokens[:, :, None].astype(np.float32).repeat(2, axis=2), tokens[:, 0].astype(np.int64)

    cache = CaptionStates(run, size=2)
    rows = torch.tensor([[1, 2], [3, 4], [1, 2]])
    states, eot = cache(rows)
    assert calls == [2] and eot.tolist() == [1, 3, 1] and states.shape == (3, 2, 2)
    np.testing.assert_array_equal(states[2], states[0])
    cache(torch.tensor([[5, 6]]))  # evicts [3, 4], the least recently used
    assert len(cache.cache) == 2
    cache(torch.tensor([[1, 2]]))
    assert calls == [2, 1]
    cache(torch.tensor([[3, 4]]))
    assert calls == [2, 1, 1]
    states, eot = cache(torch.tensor([[7, 8], [9, 10], [11, 12]]))  # larger than the cache: answered whole
    assert calls[-1] == 3 and eot.tolist() == [7, 9, 11] and states[:, :, 0].tolist() == [[7, 8], [9, 10], [11, 12]]
    assert len(cache.cache) == 3  # this call's captions are kept until the next one needs room
    cache(torch.tensor([[1, 2]]))
    assert len(cache.cache) == 2 and calls[-1] == 1


def test_a_states_export_without_its_tower_is_one_error(states_export, tmp_path):
    alone = tmp_path / states_export.name
    alone.write_bytes(states_export.read_bytes())
    with pytest.raises(InputError, match=r"the tower model-text.onnx is not beside it"):
        OnnxRuntimeModel(alone)


def test_a_tower_of_another_model_or_no_tower_at_all_is_refused(states_export, tmp_path):
    """Another checkpoint's tower would run and give wrong features; a corrupt one, onnxruntime's traceback."""
    from fba.deploy.export import TEXT_TOWER_FILE, export_text_tower
    from fba.model.model_file import load_model
    from _deploy_models import make_checkpoint

    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / states_export.name).write_bytes(states_export.read_bytes())
    model, _ = load_model(other)
    export_text_tower(model, folder / TEXT_TOWER_FILE, other)
    with pytest.raises(InputError, match=r"the text tower of another model \(checkpoint_sha256"):
        OnnxRuntimeModel(folder / states_export.name)
    (folder / TEXT_TOWER_FILE).write_bytes(b"not onnx")
    with pytest.raises(InputError, match=r"model-text.onnx"):
        OnnxRuntimeModel(folder / states_export.name)


def test_the_folder_of_a_states_export_is_the_model(states_export):
    assert OnnxRuntimeModel(states_export.parent).path == states_export  # the tower beside it is not a second model


@pytest.mark.parametrize("extra,message", [
    (["--caption-input", "states"], r"--caption-input states is an input of the full feature's graph"),
    (["--caption-input", "states", "--feature", "full", "--format", "aoti"], r"writes an ONNX model"),
])
def test_states_options_that_do_not_fit_are_one_line(checkpoint, tmp_path, cli_error, extra, message):
    cli_error(["export", "--checkpoint", checkpoint, "--out", tmp_path / "x", *extra], message)
