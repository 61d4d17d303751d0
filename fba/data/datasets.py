"""Readers for the person re-identification data set layouts of docs/design.md#data-sets, behind one registry.

Every reader returns a :class:`ReIDDataset` whose splits are lists of ``(path, pid, camid)`` with absolute
paths, sorted by path so two runs (and two ranks) see the same order. As the field does (TransReID,
CLIP-ReID, fast-reid):

- training ids are relabelled to ``0..K-1`` in sorted order of the original ids;
- query and gallery keep their original ids, so id 0 (Market's distractors) stays in the gallery;
- junk images (id -1) are dropped at read time in every split and counted (``junk_dropped``, ``summary()``);
- camera ids are 0-based.

Bad input is an error naming the file: a wrong root, a missing folder or list file, an empty split, a file
name or list line that does not parse, a listed image that does not exist.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fba.errors import InputError

JUNK_PID = -1  # Market-1501's junk images: dropped by the evaluation protocol (0 marks distractors, kept)

Item = tuple[str, int, int]
SPLITS = ("train", "query", "gallery")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
OCCLUDED_REID_EXTENSIONS = IMAGE_EXTENSIONS + (".tif", ".tiff")
EMBED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # a folder of crops to embed

_MARKET_NAME = re.compile(r"(-?\d+)_c(\d+)")
# What int() takes, checked before calling it; str.isdigit() also passes "²", on which int() raises.
_INTEGER = re.compile(r"-?\d+")
_DIGITS = re.compile(r"\d+")


class DatasetError(InputError):
    """A data set on disk does not have the layout its reader expects; the message names the path."""


@dataclass
class ReIDDataset:
    name: str
    root: Path
    train: list[Item]
    query: list[Item]
    gallery: list[Item]
    junk_dropped: dict[str, int] = field(default_factory=dict)  # split -> images with id -1 left out
    notes: tuple[str, ...] = ()  # how the protocol differs from Market-1501's, shown by summary()

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({camid for _, _, camid in self.train})

    def split(self, name: str) -> list[Item]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, name)

    def relpath(self, path: str | Path) -> str:
        """The image's path relative to the data set root, POSIX separators: the key of its captions."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError as err:
            raise DatasetError(f"{path} is not inside the data set root {self.root}") from err

    def summary(self) -> str:
        rows = [f"=> {self.name} at {self.root}", "  subset   | # ids | # images | # cameras", "  " + "-" * 40]
        for split in SPLITS:
            items = self.split(split)
            pids = {pid for _, pid, _ in items}
            cams = {camid for _, _, camid in items}
            rows.append(f"  {split:<8} | {len(pids):5d} | {len(items):8d} | {len(cams):9d}")
        dropped = sum(self.junk_dropped.values())
        if dropped:
            where = ", ".join(f"{split} {n}" for split, n in self.junk_dropped.items() if n)
            rows.append(f"  junk images (id -1) dropped: {dropped} ({where})")
        rows += [f"  note: {note}" for note in self.notes]
        return "\n".join(rows)


DatasetReader = Callable[..., ReIDDataset]
DATASETS: dict[str, DatasetReader] = {}


def register(name: str) -> Callable[[DatasetReader], DatasetReader]:
    """Add a reader ``reader(root: Path, **options) -> ReIDDataset`` to :data:`DATASETS` under ``name``."""

    def decorator(reader: DatasetReader) -> DatasetReader:
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is already registered")
        DATASETS[name] = reader
        return reader

    return decorator


def build_dataset(name: str, root: str | Path, **options) -> ReIDDataset:
    """Read the data set ``name`` under ``root``; ``options`` go to its reader (e.g. ``subset`` for cuhk03np)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data set root {root} does not exist or is not a directory (data set {name!r})")
    return DATASETS[name](root.resolve(), **options)


def relabel(items: Iterable[Item]) -> list[Item]:
    """Map the ids of ``items`` to ``0..K-1`` in sorted order of the original ids (training labels)."""
    items = list(items)
    label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, label[pid], camid) for path, pid, camid in items]


def _drop_junk(items: list[Item]) -> tuple[list[Item], int]:
    kept = [item for item in items if item[1] != JUNK_PID]
    return kept, len(items) - len(kept)


def _image_files(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"missing split folder {folder}")
    with os.scandir(folder) as entries:
        return sorted(
            Path(entry.path) for entry in entries
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in extensions
        )


def _parse_market_name(path: Path) -> tuple[int, int]:
    match = _MARKET_NAME.match(path.name)
    if match is None:
        raise DatasetError(f"cannot parse id and camera from file name {path} (expected e.g. 0002_c1s1_000451_03.jpg)")
    pid, cam = int(match.group(1)), int(match.group(2))
    if pid < JUNK_PID or cam < 1:
        raise DatasetError(f"bad id {pid} or camera {cam} in file name {path} (ids >= -1, cameras from 1)")
    return pid, cam - 1


def _read_market_folder(folder: Path) -> list[Item]:
    return [(str(path), *_parse_market_name(path)) for path in _image_files(folder)]


def _assemble(name: str, root: Path, splits: dict[str, list[Item]], allow_empty: tuple[str, ...] = ()) -> ReIDDataset:
    """Drop junk, check no split is empty, sort, relabel the training ids."""
    kept: dict[str, list[Item]] = {}
    junk: dict[str, int] = {}
    for split in SPLITS:
        items, source = splits[split]
        kept[split], junk[split] = _drop_junk(items)
        if not kept[split] and split not in allow_empty:
            raise DatasetError(f"{name}: split {split!r} is empty ({source} has no usable images)")
        kept[split].sort()
    return ReIDDataset(name, root, relabel(kept["train"]), kept["query"], kept["gallery"], junk)


def _market_layout(name: str, root: Path) -> ReIDDataset:
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    splits = {split: (_read_market_folder(root / folder), root / folder) for split, folder in folders.items()}
    return _assemble(name, root, splits)


@register("market1501")
def read_market1501(root: Path) -> ReIDDataset:
    return _market_layout("market1501", root)


@register("dukemtmc")
def read_dukemtmc(root: Path) -> ReIDDataset:
    return _market_layout("dukemtmc", root)


@register("occluded_duke")
def read_occluded_duke(root: Path) -> ReIDDataset:
    return _market_layout("occluded_duke", root)


@register("synthetic")
def read_synthetic(root: Path) -> ReIDDataset:
    """The synthetic generator (``fba synth``) writes the Market-1501 layout."""
    return _market_layout("synthetic", root)


@register("cuhk03np")
def read_cuhk03np(root: Path, subset: str = "labeled") -> ReIDDataset:
    """CUHK03-NP, the new 767/700 protocol: ``<root>/labeled/...`` or ``<root>/detected/...`` (Market layout)."""
    if subset not in ("labeled", "detected"):
        raise DatasetError(f"cuhk03np: subset must be 'labeled' or 'detected', got {subset!r}")
    return dataclasses.replace(_market_layout("cuhk03np", root / subset), root=root)


@register("occluded_reid")
def read_occluded_reid(root: Path) -> ReIDDataset:
    """Occluded-ReID is test only: query = occluded bodies (camera 0), gallery = whole bodies (camera 1)."""
    splits: dict[str, tuple[list[Item], Path]] = {"train": ([], root)}
    for split, folder_name, camid in (("query", "occluded_body_images", 0), ("gallery", "whole_body_images", 1)):
        folder = root / folder_name
        if not folder.is_dir():
            raise DatasetError(f"missing split folder {folder}")
        items: list[Item] = []
        for person in sorted(p for p in folder.iterdir() if p.is_dir()):
            if not _DIGITS.fullmatch(person.name):
                raise DatasetError(f"cannot parse the id from folder name {person} (expected digits, e.g. 001)")
            pid = int(person.name)
            items += [(str(path), pid, camid) for path in _image_files(person, OCCLUDED_REID_EXTENSIONS)]
        splits[split] = (items, folder)
    return _assemble("occluded_reid", root, splits, allow_empty=("train",))


def _read_msmt_list(list_file: Path, image_dir: Path) -> list[Item]:
    if not list_file.is_file():
        raise DatasetError(f"missing list file {list_file}")
    items: list[Item] = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{list_file}, line {line_no}"
        if len(fields) != 2 or not _INTEGER.fullmatch(fields[1]):
            raise DatasetError(f"{where}: expected '<relative path> <id>', got {line!r}")
        relative, pid = fields[0], int(fields[1])
        name_fields = Path(relative).stem.split("_")
        if len(name_fields) < 3 or not _DIGITS.fullmatch(name_fields[2]) or int(name_fields[2]) < 1:
            raise DatasetError(
                f"{where}: cannot parse the camera from {relative!r} (expected e.g. 0000_000_01_0303morning_0015_0.jpg)"
            )
        path = image_dir / relative
        if not path.is_file():
            raise DatasetError(f"{where}: listed image {path} does not exist")
        items.append((str(path), pid, int(name_fields[2]) - 1))
    return items


@register("msmt17")
def read_msmt17(root: Path) -> ReIDDataset:
    """MSMT17: list files name images under ``train/`` (train, val) and ``test/`` (query, gallery).

    As the field does, the validation list is merged into training (its ids are training ids) before relabelling.
    """
    train = _read_msmt_list(root / "list_train.txt", root / "train")
    train += _read_msmt_list(root / "list_val.txt", root / "train")
    splits = {
        "train": (train, root / "list_train.txt"),
        "query": (_read_msmt_list(root / "list_query.txt", root / "test"), root / "list_query.txt"),
        "gallery": (_read_msmt_list(root / "list_gallery.txt", root / "test"), root / "list_gallery.txt"),
    }
    return _assemble("msmt17", root, splits)
