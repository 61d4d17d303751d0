"""The generator: plan the set, draw every image (in worker processes if asked), and write the Market folders,
``attributes.jsonl`` (the truth), ``captions.jsonl`` (the truth, or what a captioner would report with
``caption_noise > 0``) and ``meta.json`` (which names the caption noise level when it is not 0).

Output is byte-identical for a seed, whatever ``workers`` is: the plan is drawn in the parent, and image ``i``
draws its jitter from ``default_rng((seed, i))``.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fba.data.captions import Caption, caption_line

from .attributes import SynthError
from .captions import describe
from .drawing import render_task
from .noise import check_level
from .splits import SPLIT_FOLDERS, Job, plan

VERSION = "1"


@dataclass
class SynthSummary:
    out: Path
    counts: dict[str, int]
    num_images: int
    num_ids: int
    num_cams: int
    occluded: bool
    seconds: float
    images_per_s: float
    ids_per_split: dict[str, int] = field(default_factory=dict)
    caption_noise: float = 0.0

    def __str__(self) -> str:
        counts = ", ".join(f"{split} {n}" for split, n in self.counts.items())
        noise = f", captions at noise level {self.caption_noise:g}" if self.caption_noise else ""
        return (f"wrote {self.num_images} images ({counts}) of {self.num_ids} ids in {self.num_cams} cameras"
                f"{' (occluded)' if self.occluded else ''}{noise} to {self.out} in {self.seconds:.1f} s "
                f"({self.images_per_s:.0f} images/s)")



def _check_arguments(out: Path, ids: int, cams: int, per_camera: int, height: int, width: int, distractors: int,
                     workers: int, overwrite: bool) -> None:
    problems = []
    if ids < 4:
        problems.append(f"ids must be >= 4 (two training and two test identities), got {ids}")
    if cams < 2:
        problems.append(f"cams must be >= 2 (queries need gallery images in another camera), got {cams}")
    if per_camera < 2:
        problems.append(f"per-camera must be >= 2 (a test id needs query and gallery images), got {per_camera}")
    if height < 32 or width < 16:
        problems.append(f"image size must be at least 32x16 (HxW), got {height}x{width}")
    if distractors < 0:
        problems.append(f"distractors must be >= 0, got {distractors}")
    if workers < 1:
        problems.append(f"workers must be >= 1, got {workers}")
    problems += output_problems(out, overwrite)
    if problems:
        raise SynthError("fba synth: " + "; ".join(problems))


def output_problems(out: Path, overwrite: bool) -> list[str]:
    """What stops ``fba synth`` writing into ``out``: a file there, or a non-empty folder without ``overwrite``."""
    if out.exists() and not out.is_dir():
        return [f"output {out} exists and is not a directory"]
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        return [f"output directory {out} exists and is not empty (pass --overwrite to replace it)"]
    return []


def _rendered(jobs: list[Job], seed: int, height: int, width: int, workers: int) -> Iterator[tuple[str, bytes, dict]]:
    tasks = [(job, seed, height, width) for job in jobs]
    if workers == 1:
        yield from map(render_task, tasks)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(render_task, tasks, chunksize=16)


def generate(out: str | Path, ids: int = 50, cams: int = 4, seed: int = 0, occluded: bool = False,
             per_camera: int = 6, height: int = 128, width: int = 64, distractors: int | None = None,
             workers: int = 1, overwrite: bool = False, progress: bool = True,
             caption_noise: float = 0.0) -> SynthSummary:
    """Write the synthetic set under ``out``: the three Market folders, ``captions.jsonl``, ``attributes.jsonl``
    and ``meta.json``. ``distractors`` defaults to ``max(cams, ids // 5)`` id-0 gallery images; ``caption_noise``
    is the level of :mod:`.noise` (0: captions from the truth, 1: a realistic captioner)."""
    out = Path(out)
    distractors = max(cams, ids // 5) if distractors is None else distractors
    caption_noise = check_level(caption_noise)
    _check_arguments(out, ids, cams, per_camera, height, width, distractors, workers, overwrite)
    for folder in SPLIT_FOLDERS.values():
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir(parents=True)
    jobs = plan(ids, cams, seed, occluded, per_camera, distractors)

    start = time.perf_counter()
    records = []
    bar = tqdm(total=len(jobs), unit="img", desc="fba synth", disable=not progress)
    for image, data, record in _rendered(jobs, seed, height, width, workers):
        (out / image).write_bytes(data)
        records.append(record)
        bar.update()
    bar.close()
    seconds = time.perf_counter() - start

    records.sort(key=lambda r: r["image"])
    with (out / "attributes.jsonl").open("w", encoding="utf-8") as file:
        file.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with (out / "captions.jsonl").open("w", encoding="utf-8") as file:
        file.writelines(caption_line(r["image"], Caption(*describe(r, caption_noise, seed))) for r in records)

    counts = {split: sum(job.split == split for job in jobs) for split in SPLIT_FOLDERS}
    ids_per_split = {split: len({job.pid for job in jobs if job.split == split and job.pid > 0})
                     for split in SPLIT_FOLDERS}
    meta = {
        "generator": "fba.data.synthetic", "version": VERSION, "seed": seed, "ids": ids, "cams": cams,
        "per_camera": per_camera, "height": height, "width": width, "occluded": occluded,
        "distractors": distractors, "counts": counts, "ids_per_split": ids_per_split,
        "occluded_images": {split: sum(bool(r["occluders"]) for r in records if r["split"] == split)
                            for split in SPLIT_FOLDERS},
        "cameras": _cameras(jobs),
    }
    if caption_noise:
        meta["caption_noise"] = caption_noise
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return SynthSummary(out, counts, len(jobs), ids, cams, occluded, seconds, len(jobs) / max(seconds, 1e-9),
                        ids_per_split, caption_noise)


def _cameras(jobs: list[Job]) -> list[dict[str, Any]]:
    cameras = {job.cam: job.camera for job in jobs}
    return [cameras[c] for c in sorted(cameras)]

