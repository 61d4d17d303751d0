"""Pre-flight: every image of every split is opened and decoded (at reduced scale) before the first step.

A truncated or corrupt query or gallery image would otherwise be found only at the first evaluation, after hours
of training. JPEGs are decoded with PIL's draft mode (1/8 scale: the whole entropy-coded stream is read, so a
truncated file fails, at a fraction of a full decode); other formats are decoded fully. Threads overlap the reads
(PIL releases the GIL while decoding). Captions were checked when the data set was loaded (every line parsed,
every image of a split that needs one has one). See docs/reliability.md, "Pre-flight".
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm import tqdm

from fba.data.transforms import ImageReadError


def check_image(path: str) -> None:
    """Open ``path`` and decode it (JPEG at 1/8 scale); raise :class:`ImageReadError` naming it if that fails."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                raise ValueError(f"size {width}x{height}")
            if image.format == "JPEG":
                image.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None


def preflight_images(paths: Sequence[str], progress: bool = True, workers: int | None = None) -> None:
    """Check every image in ``paths``; the first unreadable one raises :class:`ImageReadError`."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(check_image, paths), total=len(paths), desc="pre-flight: reading every image",
                      unit="img", disable=not progress, leave=False):
            pass


def preflight_dataset(dataset, rank: int = 0, world_size: int = 1, progress: bool = True) -> None:
    """Check the images of the train, query and gallery splits; rank ``r`` of ``W`` checks every W-th one."""
    paths = [item[0] for split in (dataset.train, dataset.query, dataset.gallery) for item in split]
    preflight_images(paths[rank::world_size], progress=progress)
