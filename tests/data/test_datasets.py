from __future__ import annotations

import re
from pathlib import Path

import pytest
from image_trees import MARKET_FILES, make_market_tree

from fba.data import DATASETS, DatasetError, build_dataset


def touch(root: Path, *relatives: str) -> None:
    for relative in relatives:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"")


def test_market_reader_relabels_train_and_keeps_test_ids(market_root: Path):
    (market_root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    ds = build_dataset("market1501", market_root)

    assert ds.root == market_root.resolve()
    assert all(Path(path).is_absolute() and Path(path).is_file() for path, _, _ in ds.train + ds.query + ds.gallery)
    assert [p for p, _, _ in ds.train] == sorted(p for p, _, _ in ds.train)
    train = {Path(p).name: (pid, cam) for p, pid, cam in ds.train}
    assert train["0002_c1s1_000451_01.jpg"] == (0, 0)
    assert train["0007_c2s1_000201_01.jpg"] == (1, 1)
    assert train["0011_c3s2_000301_02.jpg"] == (2, 2)
    assert ds.num_train_pids == 3 and ds.num_train_cams == 3 and len(ds.train) == 9
    assert sorted(pid for _, pid, _ in ds.query) == [3, 5]
    assert sorted(pid for _, pid, _ in ds.gallery) == [0, 3, 5]  # distractor 0 stays, junk -1 dropped
    assert ds.junk_dropped == {"train": 0, "query": 0, "gallery": 2}
    assert ds.relpath(ds.query[0][0]) == "query/0003_c1s1_000010_00.jpg"


def test_summary_table(market_root: Path):
    summary = build_dataset("market1501", market_root).summary()
    lines = summary.splitlines()
    assert "# ids" in lines[1] and "# images" in lines[1] and "# cameras" in lines[1]
    assert [cell.strip() for cell in lines[3].split("|")] == ["train", "3", "9", "3"]
    assert [cell.strip() for cell in lines[4].split("|")] == ["query", "2", "2", "2"]
    assert [cell.strip() for cell in lines[5].split("|")] == ["gallery", "3", "3", "3"]
    assert "junk images (id -1) dropped: 2" in summary


@pytest.mark.parametrize("name", ["dukemtmc", "occluded_duke", "synthetic"])
def test_market_layout_family(tmp_path: Path, name: str):
    touch(tmp_path, "bounding_box_train/0005_c2_f0046985.jpg", "bounding_box_train/0009_c8_f0000001.png",
          "query/0012_c1_f0000002.jpeg", "bounding_box_test/0012_c4_f0000003.jpg")
    ds = build_dataset(name, tmp_path)
    assert ds.name == name
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 1), (1, 7)]
    assert [(pid, cam) for _, pid, cam in ds.query + ds.gallery] == [(12, 0), (12, 3)]


@pytest.mark.parametrize("subset", ["labeled", "detected"])
def test_cuhk03np_subsets(tmp_path: Path, subset: str):
    other = "detected" if subset == "labeled" else "labeled"
    touch(tmp_path, f"{subset}/bounding_box_train/0001_c1_1.png", f"{subset}/bounding_box_train/0001_c2_2.png",
          f"{subset}/query/0700_c1_1.png", f"{subset}/bounding_box_test/0700_c2_1.png",
          f"{other}/bounding_box_train/0002_c1_1.png", f"{other}/query/0002_c1_1.png",
          f"{other}/bounding_box_test/0002_c1_1.png")
    ds = build_dataset("cuhk03np", tmp_path, subset=subset)
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 0), (0, 1)]
    assert ds.relpath(ds.query[0][0]) == f"{subset}/query/0700_c1_1.png"


def test_cuhk03np_defaults_to_labeled_and_rejects_bad_subset(tmp_path: Path):
    touch(tmp_path, "labeled/bounding_box_train/0001_c1_1.png", "labeled/query/0700_c1_1.png",
          "labeled/bounding_box_test/0700_c2_1.png")
    ds = build_dataset("cuhk03np", tmp_path)
    assert ds.relpath(ds.train[0][0]) == "labeled/bounding_box_train/0001_c1_1.png"
    with pytest.raises(DatasetError, match="subset"):
        build_dataset("cuhk03np", tmp_path, subset="both")


def test_occluded_reid(tmp_path: Path):
    touch(tmp_path, "occluded_body_images/001/001_01.tif", "occluded_body_images/002/002_01.jpg",
          "whole_body_images/001/001_01.tif", "whole_body_images/002/002_01.png",
          "whole_body_images/002/002_02.png")
    ds = build_dataset("occluded_reid", tmp_path)
    assert ds.train == [] and ds.num_train_pids == 0
    assert [(pid, cam) for _, pid, cam in ds.query] == [(1, 0), (2, 0)]
    assert [(pid, cam) for _, pid, cam in ds.gallery] == [(1, 1), (2, 1), (2, 1)]


def test_occluded_reid_bad_folder_name(tmp_path: Path):
    touch(tmp_path, "occluded_body_images/abc/1.jpg", "whole_body_images/001/1.jpg")
    with pytest.raises(DatasetError, match=r"occluded_body_images/abc"):
        build_dataset("occluded_reid", tmp_path)


def test_occluded_reid_folder_name_of_non_decimal_digits(tmp_path: Path):
    # "²".isdigit() is True but int("²") raises: the reader's error must come first, naming the folder.
    touch(tmp_path, "occluded_body_images/00²/1.jpg", "whole_body_images/001/1.jpg")
    with pytest.raises(DatasetError, match=r"occluded_body_images/00²"):
        build_dataset("occluded_reid", tmp_path)


def make_msmt(root: Path) -> Path:
    train = ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_05_0303morning_0016_0.jpg 0",
             "0003/0003_000_02_0303noon_0001_0.jpg 3"]
    val = ["0001/0001_000_15_0303noon_0002_0.jpg 1"]
    query = ["0010/0010_000_07_0303afternoon_0003_0.jpg 10"]
    gallery = ["0010/0010_001_03_0303afternoon_0004_0.jpg 10", "0011/0011_000_04_0303afternoon_0005_0.jpg 11"]
    for name, lines, folder in (("train", train, "train"), ("val", val, "train"), ("query", query, "test"),
                                ("gallery", gallery, "test")):
        (root / f"list_{name}.txt").write_text("\n".join(lines) + "\n")
        touch(root, *(f"{folder}/{line.split()[0]}" for line in lines))
    return root


def test_msmt17_merges_val_into_train(tmp_path: Path):
    ds = build_dataset("msmt17", make_msmt(tmp_path))
    assert sorted((Path(p).name[:4], pid, cam) for p, pid, cam in ds.train) == [
        ("0000", 0, 0), ("0000", 0, 4), ("0001", 1, 14), ("0003", 2, 1)]
    assert [(pid, cam) for _, pid, cam in ds.query] == [(10, 6)]
    assert [(pid, cam) for _, pid, cam in ds.gallery] == [(10, 2), (11, 3)]
    assert ds.relpath(ds.query[0][0]) == "test/0010/0010_000_07_0303afternoon_0003_0.jpg"


def test_msmt17_errors_name_list_file_and_line(tmp_path: Path):
    root = make_msmt(tmp_path)
    with (root / "list_query.txt").open("a") as out:
        out.write("0010/0010_002_07_0303afternoon_0009_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_query\.txt, line 2: expected"):
        build_dataset("msmt17", root)

    (root / "list_query.txt").write_text("0010/0010_000_07_0303afternoon_0003_0.jpg 10\n0010/bad.jpg 10\n")
    with pytest.raises(DatasetError, match=r"list_query\.txt, line 2: cannot parse the camera"):
        build_dataset("msmt17", root)

    (root / "list_query.txt").write_text("0010/0010_009_07_0303afternoon_0003_0.jpg 10\n")
    with pytest.raises(DatasetError, match=r"list_query\.txt, line 1: listed image .*0010_009_07.* does not exist"):
        build_dataset("msmt17", root)

    (root / "list_val.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing list file .*list_val\.txt"):
        build_dataset("msmt17", root)


@pytest.mark.parametrize("line,error", [
    ("0010/0010_000_07_0303afternoon_0003_0.jpg --3", "expected"),
    ("0010/0010_000_07_0303afternoon_0003_0.jpg 1-0", "expected"),
    ("0010/0010_000_07_0303afternoon_0003_0.jpg -", "expected"),
    ("0010/0010_000_²_0303afternoon_0003_0.jpg 10", "cannot parse the camera"),
])
def test_msmt17_malformed_numbers_are_reader_errors(tmp_path: Path, line: str, error: str):
    root = make_msmt(tmp_path)
    (root / "list_query.txt").write_text(line + "\n")
    with pytest.raises(DatasetError, match=rf"list_query\.txt, line 1: {error}"):
        build_dataset("msmt17", root)


def test_unknown_name_lists_valid_names(tmp_path: Path):
    with pytest.raises(DatasetError, match="valid names: .*market1501.*msmt17"):
        build_dataset("market", tmp_path)
    assert set(DATASETS) >= {"market1501", "dukemtmc", "occluded_duke", "cuhk03np", "occluded_reid", "msmt17",
                             "synthetic"}


def test_missing_root(tmp_path: Path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        build_dataset("market1501", tmp_path / "nowhere")


def test_missing_split_folder(tmp_path: Path):
    files = {k: v for k, v in MARKET_FILES.items() if k != "query"}
    root = make_market_tree(tmp_path / "m", files)
    with pytest.raises(DatasetError, match=r"missing split folder .*m/query"):
        build_dataset("market1501", root)


def test_empty_split_and_junk_only_split(tmp_path: Path):
    root = make_market_tree(tmp_path / "m", {**MARKET_FILES, "query": []})
    (root / "query").mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match=r"split 'query' is empty \(.*m/query"):
        build_dataset("market1501", root)
    root = make_market_tree(tmp_path / "j", {**MARKET_FILES, "query": ["-1_c1s1_000001_00.jpg"]})
    with pytest.raises(DatasetError, match="split 'query' is empty"):
        build_dataset("market1501", root)


def test_unparsable_file_name(market_root: Path):
    touch(market_root, "bounding_box_train/person_12.jpg")
    with pytest.raises(DatasetError, match=r"cannot parse .*bounding_box_train/person_12\.jpg"):
        build_dataset("market1501", market_root)


@pytest.mark.parametrize("name", ["12-3_c1s1_000001_00.jpg", "-_c1.jpg", "--1_c1s1_000001_00.jpg", "1-_c2.jpg"])
def test_file_name_with_a_malformed_id(market_root: Path, name: str):
    touch(market_root, f"bounding_box_train/{name}")
    with pytest.raises(DatasetError, match=rf"cannot parse .*bounding_box_train/{re.escape(name)}"):
        build_dataset("market1501", market_root)


def test_relpath_outside_root(market_root: Path, tmp_path: Path):
    ds = build_dataset("market1501", market_root)
    with pytest.raises(DatasetError, match="not inside"):
        ds.relpath(tmp_path / "elsewhere.jpg")
