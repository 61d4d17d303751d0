"""The plan of a synthetic set: which identity is drawn in which camera and split, as a list of :class:`Job`.

The plan is drawn in the parent process from ``default_rng((seed, 0x5EED))``; each job carries everything but
its per-image jitter, so the images can be drawn in any order, by any number of workers, to the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .attributes import OCCLUSION_RATE, sample_cameras, sample_people, sample_person

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


@dataclass(frozen=True)
class Job:
    """One image to draw: everything but the per-image jitter, which comes from ``default_rng((seed, index))``."""

    index: int
    split: str
    pid: int
    cam: int  # 0-based
    person: dict[str, Any]
    camera: dict[str, Any]
    occlusion_rate: float

    @property
    def image(self) -> str:
        name = f"{self.pid:04d}_c{self.cam + 1}s1_{self.index:06d}_00.jpg"
        return f"{SPLIT_FOLDERS[self.split]}/{name}"


def plan(ids: int, cams: int, seed: int, occluded: bool, per_camera: int, distractors: int) -> list[Job]:
    """Market-style splits: ids 1..ids//2 train, the rest test (a query or two each, the rest gallery), and
    ``distractors`` id-0 gallery images of people who are nobody's identity."""
    rng = np.random.default_rng((seed, 0x5EED))
    people = sample_people(rng, ids)
    cameras = sample_cameras(rng, cams)
    entries: list[tuple[str, int, int, dict[str, Any]]] = []
    for pid in range(1, ids + 1):
        seen = list(range(cams))
        if cams >= 3 and rng.random() < 0.3:
            seen.remove(int(rng.integers(cams)))
        if pid <= ids // 2:
            entries += [("train", pid, cam, people[pid]) for cam in seen for _ in range(per_camera)]
            continue
        query_cams = rng.choice(seen, size=int(rng.integers(1, min(2, len(seen) - 1) + 1)), replace=False)
        for cam in seen:
            in_query = int(cam in query_cams)
            entries += [("query" if k < in_query else "gallery", pid, cam, people[pid]) for k in range(per_camera)]
    entries += [("gallery", 0, int(rng.integers(cams)), sample_person(rng)) for _ in range(distractors)]
    return [
        Job(i, split, pid, cam, person, cameras[cam], OCCLUSION_RATE[split] if occluded else 0.0)
        for i, (split, pid, cam, person) in enumerate(entries)
    ]
