"""``data.dataset=folder``: a data set of your own, described by a listing or laid out one folder per identity.

Two ways, both under ``data.root`` (docs/retrieval.md, "Data sets without code"):

- a listing, ``data.options.list=list.csv`` (or ``.jsonl``), one image a row with ``path`` (relative to the
  root), ``pid`` (integer; -1 junk, 0 distractor as in Market-1501), ``split`` (train, query or gallery) and an
  optional ``camid`` (integer from 0). CSV needs a header row naming the columns.
- folders, ``<root>/<split>/<pid>/<image>`` or ``<root>/<split>/<pid>/<camid>/<image>``.

A listing is UTF-8, with or without the byte-order mark a spreadsheet writes; any other encoding or a NUL byte
is refused naming the line and byte. An image listed in both query and gallery is refused (a query would find
itself) unless ``data.options.query_in_gallery=true`` allows it, and the summary says so. Cameras are all given
or none. Without them every image is its own camera: a query then loses only itself from its gallery (not the
other images of its camera, as Market-1501's protocol would), and ``summary()`` says so.
Errors name the file and line (or folder), as the built-in readers' do.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path

from fba.data.datasets import (
    _INTEGER, JUNK_PID, SPLITS, DatasetError, Item, ReIDDataset, _assemble, _image_files, register,
)

LIST_COLUMNS = ("path", "pid", "split")
INT64_MAX = 2**63 - 1  # ids and cameras are stored as int64
QUERY_IN_GALLERY_NOTE = "query_in_gallery: an image may be both a query and in its gallery"
NO_CAMERA_NOTE = "no cameras given: every image is its own camera (a query loses only itself from its gallery)"


def _integer(value, where: str, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DatasetError(f"{where}: {name} must be an integer, got {value!r}")
    text = str(value).strip()
    if not _INTEGER.fullmatch(text):
        raise DatasetError(f"{where}: {name} must be an integer, got {value!r}")
    number = int(text)
    if number < minimum:
        raise DatasetError(f"{where}: {name} must be >= {minimum}, got {number}")
    if number > INT64_MAX:
        raise DatasetError(f"{where}: {name} must be < 2^63, got {number}")
    return number


def _listing_text(list_file: Path) -> str:
    """The listing decoded as UTF-8 (a leading byte-order mark dropped); a NUL byte or invalid UTF-8 is refused
    with its line and its byte within the line."""
    data = list_file.read_bytes().removeprefix(b"\xef\xbb\xbf")

    def where(offset: int) -> str:
        line_start = data.rfind(b"\n", 0, offset) + 1
        line = data.count(b"\n", 0, offset) + 1
        return f"{list_file}, line {line} (byte {offset - line_start + 1} of the line"

    nul = data.find(b"\0")
    if nul >= 0:
        raise DatasetError(f"{where(nul)} is a NUL byte): a listing is UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{where(err.start)} is {data[err.start]:#04x}): not UTF-8; save the listing as UTF-8") from None


def _records(list_file: Path):
    """``(where, record dict)`` per non-empty line of a CSV (with header) or JSON Lines listing."""
    suffix = list_file.suffix.lower()
    text = _listing_text(list_file)
    if suffix in (".jsonl", ".json"):
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                where = f"{list_file}, line {line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{where}: not valid JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise DatasetError(f"{where}: expected a JSON object with keys path, pid, split[, camid]")
                yield where, record
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in LIST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{list_file}, line 1: the header must name the columns path, pid, split[, camid]; "
                               f"missing {', '.join(missing)} (found {reader.fieldnames})")
        for record in reader:
            if any((value or "").strip() for value in record.values()):
                yield f"{list_file}, line {reader.line_num}", {k: v for k, v in record.items() if v not in (None, "")}
    else:
        raise DatasetError(f"{list_file}: a listing is .csv (with a header) or .jsonl, got {suffix or 'no suffix'!r}")


def _read_listing(root: Path, list_file: Path, query_in_gallery: bool = False
                  ) -> tuple[dict[str, list[tuple[str, int, int | None]]], Path]:
    if not list_file.is_file():
        raise DatasetError(f"missing list file {list_file}")
    splits: dict[str, list[tuple[str, int, int | None]]] = {split: [] for split in SPLITS}
    first_line: dict[tuple[str, str], str] = {}
    with_camera: tuple[bool, str] | None = None
    for where, record in _records(list_file):
        missing = [key for key in LIST_COLUMNS if key not in record]
        if missing:
            raise DatasetError(f"{where}: missing {', '.join(missing)}")
        split = record["split"]
        if split not in SPLITS:
            raise DatasetError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        pid = _integer(record["pid"], where, "pid", JUNK_PID)
        camid = record.get("camid")
        camid = None if camid is None else _integer(camid, where, "camid", 0)
        if with_camera is None:
            with_camera = (camid is not None, where)
        elif with_camera[0] != (camid is not None):
            raise DatasetError(f"{where}: {'no ' if camid is None else ''}camid, but {with_camera[1]} "
                               f"{'has one' if with_camera[0] else 'has none'}: give cameras on every line or none")
        if not isinstance(record["path"], str) or not record["path"].strip():
            raise DatasetError(f"{where}: path must be a non-empty string, got {record['path']!r}")
        path = (root / record["path"]).resolve()
        if not path.is_relative_to(root):
            raise DatasetError(f"{where}: image {record['path']!r} is outside the data set root {root}")
        if not path.is_file():
            raise DatasetError(f"{where}: listed image {path} does not exist")
        key = (split, str(path))
        if key in first_line:
            raise DatasetError(f"{where}: image {record['path']!r} is listed twice in {split} (first: {first_line[key]})")
        first_line[key] = where
        other = {"query": "gallery", "gallery": "query"}.get(split)
        if other and not query_in_gallery and (other, str(path)) in first_line:
            raise DatasetError(f"{where}: image {record['path']!r} is in {split} and in {other} "
                               f"({first_line[(other, str(path))]}): a query would find itself "
                               "(data.options.query_in_gallery=true allows it)")
        splits[split].append((str(path), pid, camid))
    return splits, list_file


def _read_folders(root: Path) -> dict[str, list[tuple[str, int, int | None]]]:
    splits: dict[str, list[tuple[str, int, int | None]]] = {}
    with_camera: tuple[bool, Path] | None = None
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise DatasetError(f"missing split folder {folder} (folder layout: <root>/<split>/<pid>/[<camid>/]<image>)")
        items: list[tuple[str, int, int | None]] = []
        for person in sorted(p for p in folder.iterdir() if p.is_dir()):
            pid = _integer(person.name, f"folder {person}", "the folder name (the id)", JUNK_PID)
            cameras = sorted(p for p in person.iterdir() if p.is_dir())
            images = _image_files(person)
            if cameras and images:
                raise DatasetError(f"folder {person} holds both images and camera folders: use one or the other")
            layout = (bool(cameras), person)
            if with_camera is None:
                with_camera = layout
            elif with_camera[0] != layout[0]:
                raise DatasetError(f"folder {person} {'has' if cameras else 'has no'} camera folders but "
                                   f"{with_camera[1]} {'has' if with_camera[0] else 'has none'}: all or none")
            for camera in cameras:
                camid = _integer(camera.name, f"folder {camera}", "the folder name (the camera)", 0)
                items += [(str(path), pid, camid) for path in _image_files(camera)]
            items += [(str(path), pid, None) for path in images]
        splits[split] = items
    return splits


def _own_cameras(splits: dict[str, list[tuple[str, int, int | None]]]) -> tuple[dict[str, list[Item]], bool]:
    """Items with their cameras; without cameras each image gets its own (the same image in two splits, one)."""
    given = any(camid is not None for items in splits.values() for _, _, camid in items)
    if given:
        return {split: [(p, pid, camid) for p, pid, camid in items] for split, items in splits.items()}, True
    camera_of = {path: i for i, path in enumerate(sorted({p for items in splits.values() for p, _, _ in items}))}
    return {split: [(p, pid, camera_of[p]) for p, pid, _ in items] for split, items in splits.items()}, False


@register("folder")
def read_folder(root: Path, list: str | None = None,  # noqa: A002 (the option's name)
                query_in_gallery: bool = False) -> ReIDDataset:
    """A listing (``list=FILE``, relative to the root or absolute) or the folder layout; see the module doc."""
    if not isinstance(query_in_gallery, bool):
        raise DatasetError(f"data.options.query_in_gallery must be true or false, got {query_in_gallery!r}")
    if list is not None:
        raw, source = _read_listing(root, (root / os.path.expanduser(list)).resolve(), query_in_gallery)
        sources = {split: source for split in SPLITS}
    else:
        raw = _read_folders(root)
        sources = {split: root / split for split in SPLITS}
    items, cameras_given = _own_cameras(raw)
    dataset = _assemble("folder", root, {split: (items[split], sources[split]) for split in SPLITS})
    notes = (() if cameras_given else (NO_CAMERA_NOTE,)) + ((QUERY_IN_GALLERY_NOTE,) if query_in_gallery else ())
    return dataclasses.replace(dataset, notes=notes) if notes else dataset

