"""Every command reports bad input the same way: one line ``fba CMD: error: ...`` naming the file, key or value,
and exit status 2 (docs/reliability.md, "Exit codes")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny_run import make_tiny_dataset, untrained_model_file

TINY = ["model.arch=tiny", "model.stride=16", "model.cross_layers=1", "data.height=64", "data.width=32",
        "data.num_workers=0", "data.loader=torch", "train.precision=fp32", "solver.epochs=1",
        "solver.warmup_epochs=0"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny data set, an exported (untrained) tiny model.pt and its config file."""
    base = tmp_path_factory.mktemp("bad_input")
    root = make_tiny_dataset(base / "data", train_ids=4, test_ids=2)
    model_path = untrained_model_file(root, base, 4)
    config = base / "tiny.yaml"
    config.write_text(f"data:\n  root: {root}\n")
    return {"base": base, "root": root, "model": model_path, "config": config}


def _features(path: Path, features) -> Path:
    n = len(features) if np.ndim(features) else 1
    np.savez(path, features=features, paths=np.array([f"{i}.jpg" for i in range(n)]), version=np.array(1),
             pids=np.arange(n), camids=np.zeros(n, int), split=np.array(["query", "gallery"] * (n // 2) + ["query"] * (n % 2)))
    return path


def _payload(world, **changes) -> dict:
    payload = torch.load(world["model"], weights_only=True)
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def case_broken_yaml(world, tmp):
    path = tmp / "broken.yaml"
    path.write_text("data:\n  root: [unclosed\nmodel: {\n")
    return ["train", "-c", path], r"broken.yaml, line \d+ column \d+: not valid YAML"


def case_non_utf8_captions(world, tmp):
    root = make_tiny_dataset(tmp / "data", train_ids=4, test_ids=2)
    lines = (root / "captions.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"person", b"p\xe9rson")
    (root / "captions.jsonl").write_bytes(b"".join(lines))
    return (["train", "-c", world["config"], f"data.root={root}", f"train.output_dir={tmp / 'run'}", *TINY],
            r"captions.jsonl, line 3: not UTF-8 \(byte \d+ of the line is 0xe9\)")


def case_nan_features(world, tmp):
    features = np.ones((4, 3), np.float32)
    features[2, 1] = np.nan
    return ["eval", "--features", _features(tmp / "nan.npz", features)], r"nan.npz: 1 feature rows hold NaN .*row 2"


def case_zero_features(world, tmp):
    features = np.ones((4, 3), np.float32)
    features[1] = 0
    return ["eval", "--features", _features(tmp / "zero.npz", features)], r"zero.npz: 1 feature rows are all zero"


def case_zero_dim_features(world, tmp):
    return (["eval", "--features", _features(tmp / "scalar.npz", np.float32(1.0))],
            r"scalar.npz: .*features must be 2-D|scalar.npz: not a valid features file")


def case_model_without_config(world, tmp):
    path = tmp / "noconfig.pt"
    torch.save(_payload(world, config=None), path)
    return (["embed", "--model", path, "--images", world["root"] / "query", "--image-only", "--out", tmp / "f.npz"],
            r"noconfig.pt: the model file has no config")


def case_model_for_another_class_count(world, tmp):
    path = tmp / "classes.pt"
    torch.save(_payload(world, num_classes=7), path)
    return (["eval", "-c", world["config"], "--checkpoint", path, *TINY],
            r"classes.pt: weights do not fit the model of its config \(size mismatch")


def case_missing_model(world, tmp):
    return (["eval", "-c", world["config"], "--checkpoint", tmp / "absent.pt"], r"model file .*absent.pt does not exist")


def case_pk_batch_too_large(world, tmp):
    return (["train", "-c", world["config"], f"train.output_dir={tmp / 'run'}", *TINY, "data.batch_size=32"],
            r"PKSampler: 4 identities, but a batch needs P = 8")


def case_corrupt_image_while_embedding(world, tmp):
    folder = tmp / "images"
    folder.mkdir()
    for source in sorted((world["root"] / "query").iterdir()):
        (folder / source.name).write_bytes(source.read_bytes())
    bad = folder / "0100_c1s1_000000_00.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    return (["embed", "--model", world["model"], "--images", folder, "--image-only", "--out", tmp / "f.npz",
             "--num-workers", "1"], rf"cannot read image .*{bad.name}")


def case_embed_empty_folder(world, tmp):
    (tmp / "empty").mkdir()
    return (["embed", "--model", world["model"], "--images", tmp / "empty", "--out", tmp / "f.npz"],
            r"--images .*empty: no image files")


def case_caption_bad_option(world, tmp):
    return (["caption", "--dataset", "synthetic", "--root", world["root"], "--backend", "template", "--option", "subset"],
            r"--option expects KEY=VALUE, got 'subset'")


def case_caption_missing_root(world, tmp):
    return (["caption", "--dataset", "market1501", "--root", tmp / "nowhere", "--backend", "template"], r"nowhere")


def case_export_without_arguments(world, tmp):
    return ["export"], r"give --checkpoint model.pt and --out DIR"


def case_export_out_is_a_file(world, tmp):
    (tmp / "taken").write_text("x")
    return ["export", "--checkpoint", world["model"], "--out", tmp / "taken"], r"--out .*taken: is a file; give a folder"


def case_export_out_under_a_file(world, tmp):
    (tmp / "taken").write_text("x")
    return (["export", "--checkpoint", world["model"], "--out", tmp / "taken" / "sub"],
            r"--out .*sub: .*taken is a file, so nothing can be written under it")


def case_export_aoti_for_a_missing_gpu(world, tmp):
    return (["export", "--checkpoint", world["model"], "--out", tmp / "aoti", "--format", "aoti", "--device", "cuda"],
            r"--device cuda: this machine has no usable CUDA device")


def _embed(world, tmp, *extra):
    return ["embed", "--model", world["model"], "--images", world["root"] / "query", "--image-only", *extra]


def case_embed_out_is_a_folder(world, tmp):
    (tmp / "f.safetensors").mkdir()
    return _embed(world, tmp, "--out", tmp / "f.safetensors"), r"--out .*f.safetensors: is a folder; give a file"


def case_embed_out_under_a_file(world, tmp):
    (tmp / "taken").write_text("x")
    return _embed(world, tmp, "--out", tmp / "taken" / "f.npz"), r"--out .*f.npz: .*taken is a file"


def case_embed_batch_size_zero(world, tmp):
    return _embed(world, tmp, "--out", tmp / "f.npz", "--batch-size", "0"), r"--batch-size: must be >= 1, got 0"


def case_embed_on_a_missing_gpu(world, tmp):
    return _embed(world, tmp, "--out", tmp / "f.npz", "--device", "cuda"), r"--device cuda: this machine has no usable"


def case_embed_on_no_device(world, tmp):
    return _embed(world, tmp, "--out", tmp / "f.npz", "--device", "gpu0"), r"--device 'gpu0': not a device"


def case_embed_folder_with_entries_that_are_not_images(world, tmp):
    import os

    folder = tmp / "images"
    folder.mkdir()
    for source in sorted((world["root"] / "query").iterdir()):
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "dangling.jpg").symlink_to(tmp / "absent.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    os.mkfifo(folder / "fifo.jpg")
    return (["embed", "--model", world["model"], "--images", folder,
             "--image-only", "--out", tmp / "f.npz"],
            r"--images .*images: 3 entries named like images are not image files: dangling.jpg \(a symlink to "
            r"nothing: dangling or a loop\), fifo.jpg \(not a regular file\), loop.jpg")


def case_eval_without_a_valid_match(world, tmp):
    path = tmp / "nomatch.npz"
    n = 8
    np.savez(path, features=np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32),
             paths=np.array([f"{i}.jpg" for i in range(n)]), version=np.array(1), pids=np.arange(n),
             camids=np.zeros(n, int), split=np.array(["query", "gallery"] * (n // 2)))
    return ["eval", "--features", path], r"none of the 4 queries has a valid match in the gallery"


def case_listing_query_in_gallery(world, tmp):
    root = make_tiny_dataset(tmp / "data", train_ids=4, test_ids=2)
    rows = ["path,pid,camid,split"]
    for split, folder in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        rows += [f"{folder}/{p.name},{int(p.name[:4])},{int(p.name[6]) - 1},{split}" for p in sorted((root / folder).iterdir())]
    first_query = next(r for r in rows if r.endswith(",query"))
    rows.append(first_query.replace(",query", ",gallery"))
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return (["train", "-c", world["config"], f"data.root={root}", "data.dataset=folder", "data.options.list=list.csv",
             f"train.output_dir={tmp / 'run'}", *TINY], r"list.csv, line \d+: image .* is in gallery and in query")


CASES = [case_broken_yaml, case_non_utf8_captions, case_nan_features, case_zero_features, case_zero_dim_features,
         case_model_without_config, case_model_for_another_class_count, case_missing_model, case_pk_batch_too_large,
         case_corrupt_image_while_embedding, case_embed_empty_folder, case_caption_bad_option, case_caption_missing_root,
         case_export_without_arguments, case_export_out_is_a_file, case_export_out_under_a_file,
         case_export_aoti_for_a_missing_gpu, case_embed_out_is_a_folder, case_embed_out_under_a_file,
         case_embed_batch_size_zero, case_embed_on_a_missing_gpu, case_embed_on_no_device,
         case_embed_folder_with_entries_that_are_not_images, case_eval_without_a_valid_match,
         case_listing_query_in_gallery]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, world, tmp_path, cli_error, monkeypatch):
    import deepspeed

    def refuse(*args, **kwargs):
        raise AssertionError("bad input must be found before DeepSpeed starts")

    monkeypatch.setattr(deepspeed, "initialize", refuse)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the missing-GPU rows, on any machine
    argv, pattern = case(world, tmp_path)
    cli_error(argv, pattern)
