from __future__ import annotations

import json
from pathlib import Path

import pytest

from fba.data import BG_PROMPT, FG_PROMPT, Caption, CaptionBank, CaptionError, CaptionStore, attach_captions
from fba.data import build_dataset


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def captions_for(dataset, skip: set[str] = frozenset()) -> list[dict]:
    keys = [dataset.relpath(p) for split in ("train", "query", "gallery") for p, _, _ in dataset.split(split)]
    return [{"image": k, "fg": f"person {k}", "bg": f"street {k}"} for k in keys if k not in skip]


def test_prompts_verbatim():
    assert FG_PROMPT == ("Describe the appearance of persons in the image, focusing on their appearance, "
                         "attire and accessories.")
    assert BG_PROMPT == ("Describe the background in the image with less than 50 words, focusing on any objects or "
                         "elements that might obscure the view of the person.")


def test_load_lookup_and_atomic_save_roundtrip(tmp_path: Path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"image": "query/b.jpg", "fg": "a man in red", "bg": "a car"},
        "",
        {"image": "./bounding_box_train/a.jpg", "fg": "a woman, ünïcode", "bg": "trees"},
    ])
    store = CaptionStore.load(path)
    assert len(store) == 2
    assert store["query/b.jpg"] == Caption("a man in red", "a car")
    assert "bounding_box_train/a.jpg" in store and "./bounding_box_train/a.jpg" in store
    assert "query/c.jpg" not in store
    with pytest.raises(KeyError, match="query/c.jpg"):
        store["query/c.jpg"]

    out = tmp_path / "sub" / "saved.jsonl"
    store.save(out)
    assert [json.loads(line)["image"] for line in out.read_text().splitlines()] == [
        "bounding_box_train/a.jpg", "query/b.jpg"]
    assert dict(CaptionStore.load(out)) == dict(store)
    assert sorted(p.name for p in out.parent.iterdir()) == ["saved.jsonl"]  # no temporary file left behind


@pytest.mark.parametrize("line, message", [
    ('{"image": "a.jpg", "fg": "x"', "not valid JSON"),
    ('["a.jpg", "x", "y"]', "expected a JSON object"),
    ('{"image": "a.jpg", "fg": "x"}', "missing key 'bg'"),
    ('{"image": "a.jpg", "fg": 3, "bg": "y"}', "'fg' must be a non-empty string"),
    ('{"image": "a.jpg", "fg": "x", "bg": "  "}', "'bg' must be a non-empty string"),
    ('{"image": "", "fg": "x", "bg": "y"}', "'image' must be a non-empty string"),
    ('{"image": "/abs/a.jpg", "fg": "x", "bg": "y"}', "image '/abs/a.jpg' must be a POSIX path relative"),
    ('{"image": "q/first.jpg", "fg": "x", "bg": "y"}', r"duplicate image 'q/first.jpg' \(first on line 1\)"),
])
def test_validation_errors_name_file_and_line(tmp_path: Path, line: str, message: str):
    path = write_jsonl(tmp_path / "caps.jsonl", [{"image": "q/first.jpg", "fg": "x", "bg": "y"}, "", line])
    with pytest.raises(CaptionError, match=rf"caps\.jsonl, line 3: {message}"):
        CaptionStore.load(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(CaptionError, match="nope.jsonl does not exist"):
        CaptionStore.load(tmp_path / "nope.jsonl")


def test_attach_complete(market_root: Path, tmp_path: Path):
    ds = build_dataset("market1501", market_root)
    store = CaptionStore.load(write_jsonl(tmp_path / "c.jsonl", captions_for(ds)))
    attached, missing = attach_captions(ds, store)
    assert attached is ds and missing == 0


def test_attach_missing_raises_listing_images(market_root: Path, tmp_path: Path):
    ds = build_dataset("market1501", market_root)
    skip = {"query/0005_c2s1_000020_00.jpg", "bounding_box_train/0007_c1s1_000101_01.jpg"}
    store = CaptionStore.load(write_jsonl(tmp_path / "c.jsonl", captions_for(ds, skip)))
    with pytest.raises(CaptionError) as err:
        attach_captions(ds, store)
    text = str(err.value)
    assert text.startswith("2 images of market1501") and "c.jsonl" in text
    assert all(key in text for key in skip)


def test_attach_lists_first_twenty_and_count(market_root: Path, tmp_path: Path):
    ds = build_dataset("market1501", market_root)
    with pytest.raises(CaptionError) as err:
        attach_captions(ds, CaptionStore({}, source=tmp_path / "empty.jsonl"))
    assert "14 images of market1501" in str(err.value)
    assert len(str(err.value).splitlines()) == 15  # header + 14 names (fewer than 20, so no "... more")

    many = {f"bounding_box_train/{i:04d}_c1s1_000001_01.jpg" for i in range(30, 55)}
    tree = market_root.parent / "many"
    for key in many | {"query/0003_c1s1_000010_00.jpg", "bounding_box_test/0003_c2s1_000030_01.jpg"}:
        (tree / key).parent.mkdir(parents=True, exist_ok=True)
        (tree / key).write_bytes(b"")
    with pytest.raises(CaptionError, match=r"27 images .*\n(  .*\n){20}  \.\.\. and 7 more$"):
        attach_captions(build_dataset("market1501", tree), CaptionStore({}))


def test_attach_allow_missing_drops_counts_and_relabels(market_root: Path, tmp_path: Path, caplog):
    ds = build_dataset("market1501", market_root)
    dropped_id = {"bounding_box_train/0007_c1s1_000101_01.jpg", "bounding_box_train/0007_c2s1_000201_01.jpg"}
    skip = dropped_id | {"bounding_box_test/0000_c3s1_000050_01.jpg"}
    store = CaptionStore.load(write_jsonl(tmp_path / "c.jsonl", captions_for(ds, skip)))
    with caplog.at_level("WARNING"):
        attached, missing = attach_captions(ds, store, allow_missing=True)
    assert missing == 3 and "left out 3 images" in caplog.text
    assert len(attached.train) == 7 and len(attached.gallery) == 2 and attached.query == ds.query
    assert sorted({pid for _, pid, _ in attached.train}) == [0, 1]  # ids 2 and 11 relabelled to 0..1
    assert not {attached.relpath(p) for p, _, _ in attached.train + attached.gallery} & skip


def test_caption_bank_follows_item_order(market_root: Path, tmp_path: Path):
    ds = build_dataset("market1501", market_root)
    store = CaptionStore.load(write_jsonl(tmp_path / "c.jsonl", captions_for(ds)[::-1]))
    bank = CaptionBank.for_split(ds, "train", store)
    assert len(bank) == len(ds.train)
    for i, (path, _, _) in enumerate(ds.train):
        assert bank[i] == store[ds.relpath(path)]
    fg, bg = bank.select([3, 0, 3])
    assert fg == [bank.fg[3], bank.fg[0], bank.fg[3]] and bg == [bank.bg[3], bank.bg[0], bank.bg[3]]
