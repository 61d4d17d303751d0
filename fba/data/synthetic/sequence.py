"""A tracking sequence from the synthetic set's people: one camera's scene, people walking across it at different
depths and speeds who cross, stop, turn round and pass behind street furniture, written in the MOTChallenge layout
(``img1/000001.jpg``, ``gt/gt.txt``, ``det/det.txt``, ``seqinfo.ini``) that trackers and their evaluation tools
read.

What makes association hard is drawn on purpose: people of similar depth walking in opposite directions overlap
(the nearer one hides the other), a pause or a turn breaks the constant-velocity motion a Kalman filter predicts,
and a kiosk hides a passer-by completely for a second. The ground truth keeps every person whose figure is at
least ``min_visible`` visible (the occluded frames between are gaps of the same identity); the detections are the
same boxes with a detector's jitter, so a tracker's errors are association errors, not missed detections.

Frames are drawn as :func:`.drawing.render` draws a crop (supersampled figures, light, sensor noise, JPEG), so the
crops a tracker cuts look like the images a model trained on the synthetic set has seen; the people are new
identities (sampled from the sequence's own seed).
"""
from __future__ import annotations

import io
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fba.utils.atomic import atomic_write_bytes

from .attributes import CASTS, COLOURS, LIGHTS, SynthError, sample_cameras, sample_people
from .drawing import JPEG_QUALITY, SUPERSAMPLE, camera_background, draw_person
from .generator import output_problems

FRAME_RATE = 30
DETECTION_JITTER = 0.03  # box edges move by up to 3% of the box size, as a person detector's do


@dataclass
class Walker:
    """One person's path: where they stand in depth, when they enter, which way and how fast they walk, and the
    frames where they pause or turn round."""
    pid: int
    person: dict[str, Any]
    foot: float  # fraction of the frame height where the feet are (depth: lower is nearer and larger)
    start: int
    x: float
    direction: int
    speed: float
    pauses: list[tuple[int, int]]
    turns: list[int]

    def size(self, height: int) -> float:
        return height * (0.28 + 1.1 * (self.foot - 0.8)) * self.person["height"]


@dataclass
class SequenceSummary:
    out: Path
    frames: int
    people: int
    boxes: int
    occluded_gaps: int

    def __str__(self) -> str:
        return (f"wrote {self.frames} frames with {self.people} people ({self.boxes} visible boxes, "
                f"{self.occluded_gaps} gaps where a person is hidden) to {self.out}")


def plan_walkers(rng: np.random.Generator, people: int, frames: int, width: int) -> list[Walker]:
    """Entries spread over the first two thirds of the sequence, half from each side, in two depth bands so
    that people meet at the same depth; about one in three pauses and one in four turns round."""
    identities = sample_people(rng, people)
    walkers = []
    for i, pid in enumerate(identities):
        direction = 1 if i % 2 == 0 else -1
        speed = float(rng.uniform(1.6, 3.4))
        start = int(rng.integers(0, max(1, frames * 2 // 3)))
        band = (0.82, 0.88) if rng.random() < 0.5 else (0.9, 0.96)
        pauses, turns = [], []
        if rng.random() < 0.35:
            at = start + int(rng.integers(20, 90))
            pauses.append((at, at + int(rng.integers(15, 40))))
        if rng.random() < 0.25:
            turns.append(start + int(rng.integers(40, 120)))
        walkers.append(Walker(pid, identities[pid], float(rng.uniform(*band)), start,
                              -0.08 * width if direction > 0 else 1.08 * width, direction, speed, pauses, turns))
    return walkers


def place(walker: Walker, frame: int) -> tuple[float, int, float] | None:
    """The walker's x, facing direction and walking phase at ``frame``, or None before they enter."""
    if frame < walker.start:
        return None
    x, direction, phase = walker.x, walker.direction, 0.0
    for t in range(walker.start, frame):
        if t in walker.turns:
            direction = -direction
        if any(a <= t < b for a, b in walker.pauses):
            continue
        x += direction * walker.speed
        phase += walker.speed * 0.09
    return x, direction, phase


def _walking_pose(phase: float, direction: int, bag_side: int) -> dict[str, Any]:
    stride = 0.04 + 0.16 * abs(math.sin(phase))
    swing = 0.08 + 0.12 * abs(math.cos(phase))
    return {"view": "front" if direction > 0 else "back", "arm_left": swing, "arm_right": swing,
            "leg_left": stride, "leg_right": stride, "bag_side": bag_side}


@dataclass
class Furniture:
    """A static occluder in front of everyone: a kiosk (hides a person whole), a pole or a parked car."""
    kind: str
    x: float  # centre, fraction of the width
    colour: str

    def draw(self, draw: ImageDraw.ImageDraw, h: int, w: int) -> None:
        cx = self.x * w
        colour = (*COLOURS[self.colour], 255)
        if self.kind == "kiosk":
            draw.rectangle((cx - 0.06 * w, 0.38 * h, cx + 0.06 * w, h), fill=colour)
            draw.rectangle((cx - 0.05 * w, 0.42 * h, cx + 0.05 * w, 0.6 * h), fill=(235, 235, 225, 255))
        elif self.kind == "pole":
            draw.rectangle((cx - 0.008 * w, 0.1 * h, cx + 0.008 * w, h), fill=colour)
            draw.rectangle((cx - 0.025 * w, 0.18 * h, cx + 0.025 * w, 0.3 * h), fill=(30, 90, 170, 255))
        else:
            draw.rounded_rectangle((cx - 0.12 * w, 0.8 * h, cx + 0.12 * w, h + 10), radius=0.03 * h, fill=colour)
            draw.rectangle((cx - 0.09 * w, 0.82 * h, cx + 0.09 * w, 0.87 * h), fill=(60, 75, 95, 255))


def plan_furniture(rng: np.random.Generator) -> list[Furniture]:
    xs = rng.permutation(np.linspace(0.2, 0.8, 4))
    kinds = ("kiosk", "pole", "car", "pole")
    return [Furniture(kind, float(x), str(rng.choice(["grey", "green", "navy", "brown", "red"])))
            for kind, x in zip(kinds, xs)]


def draw_frame(index: int, walkers: list[Walker], furniture: list[Furniture], camera: dict[str, Any], seed: int,
               height: int, width: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray, float]]]:
    """One RGB frame and, for each person in it, (pid, whole-figure box x1 y1 x2 y2 in frame pixels, which may
    reach beyond the frame, and the visible fraction of the figure, what is off the frame counted as hidden):
    people are drawn far to near, the furniture last."""
    s = SUPERSAMPLE
    h, w = height * s, width * s
    canvas = Image.fromarray(camera_background(camera, h, w)).convert("RGBA")
    owner = np.full((h, w), -1, np.int32)
    figures = []
    margin = w // 4  # figures are drawn whole, the part beyond the frame's edges included, for their boxes
    for k, walker in sorted(enumerate(walkers), key=lambda kv: kv[1].foot):
        placed = place(walker, index)
        if placed is None:
            continue
        x, direction, phase = placed
        layer = Image.new("RGBA", (w + 2 * margin, h), (0, 0, 0, 0))
        pose = _walking_pose(phase, direction, 1 if walker.pid % 2 else -1)
        draw_person(ImageDraw.Draw(layer), walker.person, pose, x * s + margin, walker.foot * h, walker.size(h))
        whole = np.asarray(layer)[..., 3] > 0
        mask = whole[:, margin: margin + w]
        if not mask.any():
            continue
        canvas.alpha_composite(layer.crop((margin, 0, margin + w, h)))
        owner[mask] = k
        ys, xs = np.nonzero(whole)
        box = np.array([xs.min() - margin, ys.min(), xs.max() + 1 - margin, ys.max() + 1], np.float32) / s
        figures.append((k, mask, box, whole.sum()))
    front = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    for item in furniture:
        item.draw(ImageDraw.Draw(front), h, w)
    canvas.alpha_composite(front)
    owner[np.asarray(front)[..., 3] > 0] = -1

    people = []
    for k, mask, box, pixels in figures:
        people.append((walkers[k].pid, box, float((owner == k).sum() / pixels)))
    rng = np.random.default_rng((seed, index))
    small = canvas.convert("RGB").reduce(s)
    gain = np.array(CASTS[camera["cast"]], np.float32) * LIGHTS[camera["light"]]
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(3.0)
    pixels = np.clip(np.asarray(small, np.float32) * gain + noise + 0.5, 0, 255).astype(np.uint8)
    return pixels, people


def _mot_row(frame: int, pid: int, box: np.ndarray, score: float, visibility: float) -> str:
    x1, y1, x2, y2 = (float(v) for v in box)
    return f"{frame},{pid},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:g},1,{visibility:.3f}\n"


def write_sequence(out: str | Path, frames: int = 300, people: int = 10, seed: int = 0, height: int = 360,
                   width: int = 640, min_visible: float = 0.35, overwrite: bool = False,
                   progress: bool = True) -> SequenceSummary:
    """Write the sequence under ``out`` in the MOTChallenge layout. ``gt/gt.txt`` rows are ``frame, id, x, y, w,
    h, 1, 1, visibility`` for every person at least ``min_visible`` visible and at least half inside the frame;
    ``det/det.txt`` has the same boxes jittered, id -1 and a score."""
    out = Path(out)
    problems = []
    if frames < 2:
        problems.append(f"frames must be >= 2, got {frames}")
    if people < 1:
        problems.append(f"people must be >= 1, got {people}")
    if height < 120 or width < 160:
        problems.append(f"frame size must be at least 120x160 (HxW), got {height}x{width}")
    if not 0 < min_visible <= 1:
        problems.append(f"min-visible must be in (0, 1], got {min_visible}")
    problems += output_problems(out, overwrite)
    if problems:
        raise SynthError("fba synth --sequence: " + "; ".join(problems))

    rng = np.random.default_rng(seed)
    camera = sample_cameras(rng, 1)[0]
    walkers = plan_walkers(rng, people, frames, width)
    furniture = plan_furniture(rng)
    for folder in ("img1", "gt", "det"):
        shutil.rmtree(out / folder, ignore_errors=True)  # --overwrite: no frame of a longer earlier sequence stays
        (out / folder).mkdir(parents=True)
    gt, det = [], []
    seen: dict[int, int] = {}
    gaps = 0
    for index in tqdm(range(frames), unit="frame", desc="fba synth --sequence", disable=not progress):
        pixels, figures = draw_frame(index, walkers, furniture, camera, seed, height, width)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY)
        atomic_write_bytes(out / "img1" / f"{index + 1:06d}.jpg", buffer.getvalue())
        jitter = np.random.default_rng((seed, index, 1))
        for pid, box, visible in figures:
            inside = np.clip(box, 0, [width, height, width, height])
            area = (box[2] - box[0]) * (box[3] - box[1])
            if visible < min_visible or (inside[2] - inside[0]) * (inside[3] - inside[1]) < 0.5 * area:
                continue
            if pid in seen and seen[pid] < index:
                gaps += 1
            seen[pid] = index + 1
            gt.append(_mot_row(index + 1, pid, inside, 1, visible))
            size = np.array([inside[2] - inside[0], inside[3] - inside[1]] * 2)
            noisy = np.clip(inside + jitter.uniform(-DETECTION_JITTER, DETECTION_JITTER, 4) * size, 0,
                            [width, height, width, height])
            det.append(_mot_row(index + 1, -1, noisy, round(float(jitter.uniform(0.7, 0.95)), 3), visible))
    atomic_write_bytes(out / "gt" / "gt.txt", "".join(gt).encode())
    atomic_write_bytes(out / "det" / "det.txt", "".join(det).encode())
    atomic_write_bytes(out / "seqinfo.ini", "\n".join([
        "[Sequence]", f"name={out.name}", "imDir=img1", f"frameRate={FRAME_RATE}", f"seqLength={frames}",
        f"imWidth={width}", f"imHeight={height}", "imExt=.jpg", "",
    ]).encode())
    return SequenceSummary(out, frames, people, len(gt), gaps)


def read_mot(path: str | Path) -> dict[int, np.ndarray]:
    """A MOTChallenge ``gt.txt``/``det.txt``/tracker result as {frame: rows [id, x1, y1, x2, y2, score,
    visibility]} (visibility 1 where a row has none)."""
    path = Path(path)
    rows: dict[int, list[list[float]]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            fields = line.split(",")
            frame, pid, x, y, w, h, score = (float(v) for v in fields[:7])
            visibility = float(fields[8]) if len(fields) > 8 else 1.0
        except ValueError as err:
            raise SynthError(f"{path}:{number}: not a MOTChallenge row (frame,id,x,y,w,h,score,...): {err}") from None
        rows.setdefault(int(frame), []).append([pid, x, y, x + w, y + h, score, visibility])
    return {frame: np.array(r, np.float32) for frame, r in rows.items()}
