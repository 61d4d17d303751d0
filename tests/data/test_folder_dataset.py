"""``data.dataset=folder``: listings (CSV, JSON Lines) and one folder per identity read like the built-in
readers, with and without cameras; every malformed input is an error naming its file and line (or folder);
``fba caption`` (template backend) and the training loaders work on it."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from fba.data import DatasetError, build_dataset
from fba.data.datasets import _read_market_folder
from fba.data.folder import NO_CAMERA_NOTE, QUERY_IN_GALLERY_NOTE
from image_trees import write_image

FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _market_rows(root: Path) -> list[dict]:
    """The Market tree's images as listing rows (original ids, 0-based cameras, junk included)."""
    return [
        {"path": Path(path).relative_to(root).as_posix(), "pid": pid, "camid": camid, "split": split}
        for split, folder in FOLDERS.items() for path, pid, camid in _read_market_folder(root / folder)
    ]


def _write_csv(path: Path, rows: list[dict], columns=("path", "pid", "camid", "split")) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _same_items(a, b) -> None:
    assert (a.train, a.query, a.gallery, a.junk_dropped) == (b.train, b.query, b.gallery, b.junk_dropped)


def test_csv_and_jsonl_listings_read_like_the_market_reader(market_root):
    market = build_dataset("market1501", market_root)
    rows = _market_rows(market_root)
    _write_csv(market_root / "list.csv", rows)
    _write_jsonl(market_root / "list.jsonl", rows)
    for listing in ("list.csv", "list.jsonl", str(market_root / "list.csv")):
        dataset = build_dataset("folder", market_root, list=listing)
        _same_items(dataset, market)
        assert dataset.name == "folder" and "note" not in dataset.summary()


def test_without_cameras_every_image_is_its_own_camera(market_root):
    rows = _market_rows(market_root)
    rows.append({**rows[-1], "split": "query"})  # one image both a query and in the gallery
    _write_csv(market_root / "nocam.csv", rows, columns=("path", "pid", "split"))
    with pytest.raises(DatasetError, match=r"nocam.csv, line \d+: image .* is in query and in gallery .*line \d+\): "
                       r"a query would find itself"):
        build_dataset("folder", market_root, list="nocam.csv")
    dataset = build_dataset("folder", market_root, list="nocam.csv", query_in_gallery=True)
    cameras = {path: camid for split in ("train", "query", "gallery") for path, _, camid in dataset.split(split)}
    assert len(set(cameras.values())) == len(cameras)  # one camera per image ...
    query_cam = dict((p, c) for p, _, c in dataset.query)
    assert all(query_cam[p] == c for p, _, c in dataset.gallery if p in query_cam)  # ... the same one in two splits
    assert NO_CAMERA_NOTE in dataset.summary() and QUERY_IN_GALLERY_NOTE in dataset.summary()


def test_listing_encodings(market_root):
    """A spreadsheet's UTF-8 with a byte-order mark reads like plain UTF-8; Latin-1 and NUL bytes are refused
    naming the line and the byte."""
    plain = _write_csv(market_root / "plain.csv", _market_rows(market_root)).read_bytes()
    (market_root / "bom.csv").write_bytes(b"\xef\xbb\xbf" + plain)
    _same_items(build_dataset("folder", market_root, list="bom.csv"), build_dataset("folder", market_root, list="plain.csv"))
    lines = plain.splitlines(keepends=True)
    (market_root / "latin1.csv").write_bytes(b"".join(lines[:2] + [b"caf\xe9" + lines[2]] + lines[3:]))
    with pytest.raises(DatasetError, match=r"latin1.csv, line 3 \(byte 4 of the line is 0xe9\): not UTF-8"):
        build_dataset("folder", market_root, list="latin1.csv")
    (market_root / "nul.csv").write_bytes(b"".join(lines[:3] + [b"a\0" + lines[3]] + lines[4:]))
    with pytest.raises(DatasetError, match=r"nul.csv, line 4 \(byte 2 of the line is a NUL byte\)"):
        build_dataset("folder", market_root, list="nul.csv")
    with pytest.raises(DatasetError, match=r"query_in_gallery must be true or false, got 'yes'"):
        build_dataset("folder", market_root, list="plain.csv", query_in_gallery="yes")


def test_folder_per_identity_with_and_without_camera_folders(tmp_path):
    for with_cameras in (True, False):
        root = tmp_path / f"cams{with_cameras}"
        seed = 0
        for split, pids in (("train", [7, 9]), ("query", [3]), ("gallery", [3, 0, -1])):
            for pid in pids:
                for cam in (0, 2):
                    where = root / split / str(pid) / (str(cam) if with_cameras else "")
                    write_image(where / f"img{cam}.jpg", seed=seed)
                    seed += 1
        dataset = build_dataset("folder", root)
        assert [pid for _, pid, _ in dataset.train] == [0, 0, 1, 1]  # relabelled
        assert sorted({pid for _, pid, _ in dataset.gallery}) == [0, 3] and dataset.junk_dropped["gallery"] == 2
        cams = [camid for _, _, camid in dataset.gallery]
        assert cams == ([0, 2, 0, 2] if with_cameras else sorted(set(cams)))
        assert (NO_CAMERA_NOTE in dataset.summary()) is not with_cameras


def _bad(tmp_path, rows, text=None):
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    else:
        _write_csv(path, rows)
    return path


@pytest.mark.parametrize("change,message", [
    ({"pid": "x7"}, r"bad.csv, line 3: pid must be an integer, got 'x7'"),
    ({"pid": "-2"}, r"bad.csv, line 3: pid must be >= -1"),
    ({"pid": str(2**64)}, r"bad.csv, line 3: pid must be < 2\^63, got 18446744073709551616"),
    ({"camid": "-1"}, r"bad.csv, line 3: camid must be >= 0"),
    ({"split": "val"}, r"bad.csv, line 3: split must be one of train, query, gallery, got 'val'"),
    ({"path": "bounding_box_train/missing.jpg"}, r"bad.csv, line 3: listed image .*missing.jpg does not exist"),
    ({"path": "../outside.jpg"}, r"bad.csv, line 3: image '../outside.jpg' is outside the data set root"),
    ({"camid": ""}, r"bad.csv, line 3: no camid, but .*bad.csv, line 2 has one"),
])
def test_listing_errors_name_file_and_line(market_root, change, message):
    rows = _market_rows(market_root)
    rows[1] = {**rows[1], **change}
    with pytest.raises(DatasetError, match=message):
        build_dataset("folder", market_root, list=str(_bad(market_root, rows)))


def test_listing_file_errors(market_root):
    rows = _market_rows(market_root)
    with pytest.raises(DatasetError, match=r"missing list file .*nope.csv"):
        build_dataset("folder", market_root, list="nope.csv")
    with pytest.raises(DatasetError, match=r"bad.csv, line 1: the header must name .*missing pid"):
        build_dataset("folder", market_root, list=str(_bad(market_root, rows, text="path,id,split\na.jpg,1,train\n")))
    twice = rows + [rows[0]]
    with pytest.raises(DatasetError, match=rf"line {len(rows) + 2}: image .* is listed twice in train \(first: .*line 2\)"):
        build_dataset("folder", market_root, list=str(_write_csv(market_root / "twice.csv", twice)))
    no_query = [row for row in rows if row["split"] != "query"]
    with pytest.raises(DatasetError, match=r"folder: split 'query' is empty"):
        build_dataset("folder", market_root, list=str(_write_csv(market_root / "noq.csv", no_query)))
    (market_root / "bad.jsonl").write_text('{"path": "a.jpg", "pid": 1, "split": "train"}\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl, line 1: listed image|bad.jsonl, line 2: expected a JSON"):
        build_dataset("folder", market_root, list="bad.jsonl")
    (market_root / "list.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"list.txt: a listing is .csv"):
        build_dataset("folder", market_root, list="list.txt")


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"missing split folder .*train"):
        build_dataset("folder", tmp_path)
    for split in ("train", "query", "gallery"):
        (tmp_path / split).mkdir()
    write_image(tmp_path / "train" / "bob" / "a.jpg")
    with pytest.raises(DatasetError, match=r"folder .*train/bob: the folder name \(the id\) must be an integer"):
        build_dataset("folder", tmp_path)
    (tmp_path / "train" / "bob" / "a.jpg").rename(tmp_path / "train" / "bob" / "b.jpg")
    (tmp_path / "train" / "bob").rename(tmp_path / "train" / "5")
    write_image(tmp_path / "train" / "5" / "1" / "c.jpg")
    with pytest.raises(DatasetError, match=r"train/5 holds both images and camera folders"):
        build_dataset("folder", tmp_path)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from fba.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, ids=4, cams=2, per_camera=2, height=32, width=16, progress=False, overwrite=True)
    return root


def test_caption_template_and_loaders_on_a_listing(synthetic_root, tmp_path):
    """A listing beside the synthetic set's images: the template backend finds their attributes by relative
    path, the captions attach, and the training and evaluation loaders give batches with their captions."""
    from fba.cli import main
    from fba.config import load_config
    from fba.data import CaptionBank, CaptionStore, build_train_loader
    from fba.data.loaders import load_data

    _write_jsonl(synthetic_root / "list.jsonl", _market_rows(synthetic_root))
    out = tmp_path / "captions.jsonl"
    argv = ["caption", "--dataset", "folder", "--root", str(synthetic_root), "--option", "list=list.jsonl",
            "--backend", "template", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert dict(CaptionStore.load(out)) == dict(CaptionStore.load(synthetic_root / "captions.jsonl"))

    cfg = load_config(None, ["data.dataset=folder", f"data.root={synthetic_root}", "data.options.list=list.jsonl",
                             f"data.captions={out}", "data.height=32", "data.width=16", "data.batch_size=4",
                             "data.num_instances=2", "data.num_workers=0", "data.loader=torch"])
    dataset, store = load_data(cfg, captions=True)
    _same_items(dataset, build_dataset("synthetic", synthetic_root))
    bank = CaptionBank.for_split(dataset, "train", store)
    batch = next(iter(build_train_loader(cfg, dataset.train, 0, 1)))
    images, pids = batch["images"], batch["pids"]
    assert images.shape[1:] == (3, 32, 16) and torch.all(pids < dataset.num_train_pids)
    fg, bg = bank.select(batch["index"])
    assert len(fg) == len(bg) == len(pids) and all(fg) and all(bg)


@pytest.mark.slow
def test_fba_train_on_a_listing(tmp_path):
    """One short training run of the tiny model on a CSV listing without cameras."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "engine"))
    from _tiny_run import make_tiny_dataset, tiny_config

    from fba.train.trainer import train

    root = make_tiny_dataset(tmp_path / "tiny")
    _write_csv(root / "list.csv", _market_rows(root), columns=("path", "pid", "split"))
    result = train(tiny_config(root, tmp_path / "run", "data.dataset=folder", "data.options.list=list.csv",
                               "solver.epochs=1"))
    assert result.steps > 0 and result.model_path.is_file()
    assert 0.0 <= result.final_metrics["eval/mAP"] <= 100.0
