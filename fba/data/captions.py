"""Foreground/background captions: the paper's two prompts, the JSON Lines store, and the per-split bank.

Captions are made once, offline (``fba caption``), and live beside the data set in a JSON Lines file, one
object a line: ``{"image": <path relative to the data set root, POSIX>, "fg": str, "bg": str}`` (docs/design.md#inputs).
Every line is checked on load, and every image of a data set must have its captions: a missing caption is an
error listing the images, or, where the user asks for it (``allow_missing``), a counted and logged skip.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fba.utils.atomic import atomic_path
from fba.data.datasets import SPLITS, Item, ReIDDataset, relabel
from fba.errors import InputError
from fba.utils.jsonl import parse_object

FG_PROMPT = "Describe the appearance of persons in the image, focusing on their appearance, attire and accessories."
BG_PROMPT = (
    "Describe the background in the image with less than 50 words, focusing on any objects or elements "
    "that might obscure the view of the person."
)

MAX_LISTED = 20
logger = logging.getLogger(__name__)


class CaptionError(InputError):
    """A captions file is malformed, or a data set has images without captions; the message names the file."""


@dataclass(frozen=True)
class Caption:
    fg: str
    bg: str


def caption_line(image: str, caption: Caption) -> str:
    """One line of the caption file (docs/design.md#inputs); empty captions are refused, as the reader would
    refuse them."""
    for name, text in (("fg", caption.fg), ("bg", caption.bg)):
        if not isinstance(text, str) or not text.strip():
            raise CaptionError(f"refusing to write an empty {name} caption for image {image!r}")
    return json.dumps({"image": image, "fg": caption.fg, "bg": caption.bg}, ensure_ascii=False) + "\n"


def normalize_key(image: str) -> str:
    """Caption keys are POSIX paths relative to the data set root (``./a//b.jpg`` and ``a/b.jpg`` are one key)."""
    return PurePosixPath(image).as_posix()


class CaptionStore(Mapping[str, Caption]):
    """The captions of one data set: relative image path -> :class:`Caption`."""

    def __init__(self, captions: Mapping[str, Caption] | None = None, source: str | Path | None = None):
        self._captions = {normalize_key(key): value for key, value in (captions or {}).items()}
        self.source = Path(source) if source is not None else None

    @classmethod
    def load(cls, path: str | Path) -> CaptionStore:
        path = Path(path)
        if not path.is_file():
            raise CaptionError(f"captions file {path} does not exist")
        captions: dict[str, Caption] = {}
        first_line: dict[str, int] = {}
        with path.open("rb") as lines:
            for line_no, raw in enumerate(lines, start=1):
                where = f"{path}, line {line_no}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise CaptionError(f"{where}: not UTF-8 (byte {err.start} of the line is {raw[err.start]:#04x})") from None
                if not line.strip():
                    continue
                key, caption = parse_caption_line(line, where)
                if key in captions:
                    raise CaptionError(f"{where}: duplicate image {key!r} (first on line {first_line[key]})")
                captions[key], first_line[key] = caption, line_no
        return cls(captions, source=path)

    def save(self, path: str | Path) -> None:
        """Write the store as JSON Lines, sorted by image; atomic (a temporary file renamed over ``path``)."""
        with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as out:
            out.writelines(caption_line(key, self._captions[key]) for key in sorted(self._captions))

    def __getitem__(self, image: str) -> Caption:
        try:
            return self._captions[normalize_key(image)]
        except KeyError:
            raise KeyError(f"no captions for image {image!r} in {self.source or 'the caption store'}") from None

    def __contains__(self, image: object) -> bool:
        return isinstance(image, str) and normalize_key(image) in self._captions

    def __iter__(self) -> Iterator[str]:
        return iter(self._captions)

    def __len__(self) -> int:
        return len(self._captions)


def parse_caption_line(line: str, where: str) -> tuple[str, Caption]:
    """One caption record as ``(image key, Caption)``; a :class:`CaptionError` prefixed by ``where`` if it is not
    one (the captioner also asks this of a last line without its newline: complete record or cut-off write)."""
    record = parse_object(line, where, ("image", "fg", "bg"), CaptionError)
    for key in ("image", "fg", "bg"):
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise CaptionError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    image = normalize_key(record["image"])
    if PurePosixPath(image).is_absolute() or "\\" in image:
        raise CaptionError(f"{where}: image {image!r} must be a POSIX path relative to the data set root")
    return image, Caption(record["fg"], record["bg"])


def attach_captions(
    dataset: ReIDDataset, store: CaptionStore, allow_missing: bool = False
) -> tuple[ReIDDataset, int]:
    """Check that every image of every split has captions in ``store``.

    Missing captions are an error listing the images (first 20 and the count). With ``allow_missing`` the
    images without captions are left out (training ids relabelled again, so they stay ``0..K-1``), and their
    count is logged and returned.
    """
    missing: list[str] = []
    kept: dict[str, list[Item]] = {}
    for split in SPLITS:
        kept[split] = []
        for item in dataset.split(split):
            key = dataset.relpath(item[0])
            if key in store:
                kept[split].append(item)
            else:
                missing.append(key)
    if not missing:
        return dataset, 0
    source = store.source or "the caption store"
    if not allow_missing:
        listed = "\n  ".join(missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise CaptionError(
            f"{len(missing)} images of {dataset.name} at {dataset.root} have no captions in {source}:\n  {listed}{more}"
        )
    logger.warning("%s: left out %d images without captions in %s", dataset.name, len(missing), source)
    for split in SPLITS:
        if not kept[split] and dataset.split(split):
            raise CaptionError(f"{dataset.name}: no image of split {split!r} has captions in {source}")
    trimmed = dataclasses.replace(dataset, train=relabel(kept["train"]), query=kept["query"], gallery=kept["gallery"])
    return trimmed, len(missing)


@dataclass(frozen=True)
class CaptionBank:
    """The fg and bg captions of one split's items, in item order: a batch's ``index`` picks its rows."""

    fg: tuple[str, ...]
    bg: tuple[str, ...]

    @classmethod
    def from_items(cls, items: Sequence[Item], dataset: ReIDDataset, store: CaptionStore) -> CaptionBank:
        captions = [store[dataset.relpath(path)] for path, _, _ in items]
        return cls(tuple(c.fg for c in captions), tuple(c.bg for c in captions))

    @classmethod
    def for_split(cls, dataset: ReIDDataset, split: str, store: CaptionStore) -> CaptionBank:
        return cls.from_items(dataset.split(split), dataset, store)

    def __len__(self) -> int:
        return len(self.fg)

    def __getitem__(self, index: int) -> Caption:
        return Caption(self.fg[index], self.bg[index])

    def select(self, indices: Sequence[int]) -> tuple[list[str], list[str]]:
        """The fg and bg captions of a batch, given its ``index`` (a list or an int64 tensor)."""
        rows = [int(i) for i in indices]
        return [self.fg[i] for i in rows], [self.bg[i] for i in rows]
