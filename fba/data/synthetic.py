"""``fba synth``: a procedurally drawn person re-identification set in the Market-1501 layout, with captions.

The set is built so that a model has to look at the person, as FBA argues:

- identity lives in the foreground: each identity has fixed attributes (clothes and their colours, hair, hat,
  bag, shoes, build), drawn as an articulated figure with per-image pose, scale, position and colour jitter;
- cameras differ in background: each camera has its own scene (texture, colours, light, scenery objects), shared
  by every identity it sees. Under the Market protocol (same id and same camera dropped from the gallery) the
  same-camera gallery images are all *other* people, so a background matcher ranks wrong people first;
- with ``occluded``, railings, cars, poles and other people (drawn with other attributes) stand in front of the
  person in a camera-dependent mix, most often in the query split (as Occluded-Duke).

Every image has a record in ``attributes.jsonl`` (person, scene, occluders); :func:`describe` turns a record
into the fg/bg captions written to ``captions.jsonl`` and is what ``fba caption --backend template`` calls, so the
captions can be rebuilt with nothing downloaded. Output is byte-identical for a seed, whatever ``workers`` is:
the plan is drawn in the parent, and image ``i`` draws its jitter from ``default_rng((seed, i))``.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import shutil
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fba.data.captions import Caption, caption_line
from fba.errors import InputError
from fba.jsonl import parse_object

VERSION = "1"
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
SUPERSAMPLE = 2
JPEG_QUALITY = 90

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 35, 35), "blue": (35, 65, 190), "green": (40, 150, 50), "yellow": (225, 205, 45),
    "black": (25, 25, 28), "white": (235, 235, 230), "grey": (128, 128, 128), "purple": (125, 45, 160),
    "orange": (235, 125, 25), "pink": (235, 130, 175), "brown": (115, 70, 35), "navy": (25, 30, 90),
    "beige": (215, 195, 150), "teal": (25, 140, 140),
}
HAIR_COLOURS = {"black": (20, 18, 18), "brown": (90, 55, 30), "blonde": (215, 180, 100), "grey": (160, 160, 160),
                "red": (160, 60, 25)}
SKIN_TONES = {"light": (235, 200, 170), "medium": (200, 150, 110), "dark": (120, 80, 55)}
UPPER_TYPES = ("t-shirt", "long-sleeved shirt", "jacket")
LOWER_TYPES = {"man": ("trousers", "shorts"), "woman": ("trousers", "shorts", "skirt")}
BAGS = ("none", "backpack", "handbag")
HATS = ("none", "cap")

TEXTURES = ("bricks", "grass", "tiles", "stripes", "gradient")
TEXTURE_COLOURS = {
    "bricks": ("red", "brown", "beige", "grey"),
    "grass": ("green", "teal"),
    "tiles": ("grey", "white", "blue", "beige"),
    "stripes": ("orange", "blue", "yellow", "purple", "red"),
    "gradient": ("beige", "teal", "pink", "grey", "navy"),
}
SCENERY = ("tree", "bench", "door", "window", "lamp post")
LIGHTS = {"dim": 0.8, "normal": 1.0, "bright": 1.12}
CASTS = {"neutral": (1.0, 1.0, 1.0), "warm": (1.06, 1.0, 0.9), "cool": (0.92, 0.98, 1.07)}
OCCLUDERS = ("railing", "car", "pole", "person")
OCCLUSION_RATE = {"train": 0.5, "query": 0.9, "gallery": 0.3}


class SynthError(InputError):
    """Bad arguments to the generator, or a malformed ``attributes.jsonl``; the message names what is wrong."""


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

    def __str__(self) -> str:
        counts = ", ".join(f"{split} {n}" for split, n in self.counts.items())
        return (f"wrote {self.num_images} images ({counts}) of {self.num_ids} ids in {self.num_cams} cameras"
                f"{' (occluded)' if self.occluded else ''} to {self.out} in {self.seconds:.1f} s "
                f"({self.images_per_s:.0f} images/s)")


# ---------------------------------------------------------------- attributes


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str], p: list[float] | None = None) -> str:
    return str(options[int(rng.choice(len(options), p=p))])


def sample_person(rng: np.random.Generator, upper: str | None = None, lower: str | None = None) -> dict[str, Any]:
    """The fixed attributes of one identity; ``upper``/``lower`` pin the clothing colours (kept distinct per id)."""
    names = list(COLOURS)
    gender = _choice(rng, ("man", "woman"))
    bag = _choice(rng, BAGS, p=[0.4, 0.35, 0.25])
    hat = _choice(rng, HATS, p=[0.75, 0.25])
    return {
        "gender": gender,
        "hair_length": _choice(rng, ("short", "long"), p=[0.85, 0.15] if gender == "man" else [0.25, 0.75]),
        "hair_colour": _choice(rng, tuple(HAIR_COLOURS)),
        "skin": _choice(rng, tuple(SKIN_TONES)),
        "upper_type": _choice(rng, UPPER_TYPES),
        "upper_colour": upper or _choice(rng, names),
        "lower_type": _choice(rng, LOWER_TYPES[gender]),
        "lower_colour": lower or _choice(rng, names),
        "shoes_colour": _choice(rng, ("black", "white", "brown", "grey", "red", "blue")),
        "bag": bag,
        "bag_colour": _choice(rng, names) if bag != "none" else None,
        "hat": hat,
        "hat_colour": _choice(rng, names) if hat != "none" else None,
        "height": round(float(rng.uniform(0.84, 1.0)), 3),
        "build": round(float(rng.uniform(0.85, 1.2)), 3),
    }


def sample_people(rng: np.random.Generator, ids: int) -> dict[int, dict[str, Any]]:
    """Identities 1..ids; their (upper, lower) colour pairs are distinct while there are pairs to go round."""
    names = list(COLOURS)
    pairs = [(u, v) for u in names for v in names if u != v]
    order = rng.permutation(len(pairs))
    return {pid: sample_person(rng, *pairs[order[(pid - 1) % len(pairs)]]) for pid in range(1, ids + 1)}


def sample_camera(rng: np.random.Generator, camid: int, texture: str) -> dict[str, Any]:
    """One camera's scene: the background every identity seen by this camera stands in front of."""
    colours = TEXTURE_COLOURS[texture]
    objects = sorted(rng.choice(len(SCENERY), size=int(rng.integers(1, 3)), replace=False).tolist())
    weights = rng.dirichlet(np.full(len(OCCLUDERS), 0.7))
    return {
        "camid": camid,
        "texture": texture,
        "colour": _choice(rng, colours),
        "floor": _choice(rng, ("grey", "beige", "brown", "white")),
        "light": _choice(rng, tuple(LIGHTS)),
        "cast": _choice(rng, tuple(CASTS)),
        "objects": [SCENERY[i] for i in objects],
        "object_x": [round(float(rng.uniform(0.05, 0.8)), 3) for _ in objects],
        "occluder_mix": {name: round(float(w), 3) for name, w in zip(OCCLUDERS, weights)},
        "texture_seed": int(rng.integers(2**31)),
    }


def sample_cameras(rng: np.random.Generator, cams: int) -> list[dict[str, Any]]:
    """Textures go round the cameras in a shuffled order, so up to five cameras all look different."""
    order = rng.permutation(len(TEXTURES))
    return [sample_camera(rng, c, TEXTURES[order[c % len(TEXTURES)]]) for c in range(cams)]


# ---------------------------------------------------------------- the plan (split assignment)


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


# ---------------------------------------------------------------- drawing


def _rgb(name: str, table: dict[str, tuple[int, int, int]] = COLOURS) -> tuple[int, int, int, int]:
    return (*table[name], 255)


def _shade(colour: tuple[int, ...], factor: float) -> tuple[int, int, int, int]:
    return (*(int(min(255, max(0, c * factor))) for c in colour[:3]), 255)


_BACKGROUNDS: dict[tuple[str, int, int], np.ndarray] = {}


def camera_background(camera: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The camera's scene as a uint8 [height, width, 3] array (cached: every image of a camera shares it)."""
    key = (json.dumps(camera, sort_keys=True), height, width)
    if key not in _BACKGROUNDS:
        _BACKGROUNDS[key] = _draw_background(camera, height, width)
    return _BACKGROUNDS[key]


def _draw_background(camera: dict[str, Any], h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(camera["texture_seed"])
    base = np.array(COLOURS[camera["colour"]], np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    texture = camera["texture"]
    if texture == "bricks":
        bh, bw = max(4, h // 14), max(8, w // 4)
        row = (y // bh).astype(int)
        col = ((x + (row % 2) * bw / 2) // bw).astype(int)
        jitter = rng.uniform(0.8, 1.15, size=(row.max() + 2, col.max() + 2))
        img = base * jitter[row, col][..., None]
        mortar = ((y % bh) < max(1, bh // 6)) | (((x + (row % 2) * bw / 2) % bw) < max(1, bw // 12))
        img[mortar] = (200, 195, 185)
    elif texture == "grass":
        sky = np.array((150, 190, 230), np.float32)
        horizon = int(h * 0.3)
        img = np.where((y < horizon)[..., None], sky, base * rng.uniform(0.75, 1.2, size=(h, w, 1)))
        img[horizon: horizon + max(2, h // 12)] = base * 0.55
    elif texture == "tiles":
        t = max(6, w // 5)
        checker = (((y // t) + (x // t)) % 2)[..., None]
        img = base * (0.8 + 0.25 * checker)
        img[((y % t) < 1.5) | ((x % t) < 1.5)] = (90, 90, 90)
    elif texture == "stripes":
        s = max(4, w // 8)
        img = np.where((((x // s) % 2) == 0)[..., None], base, np.array((235, 235, 225), np.float32))
        img = img.astype(np.float32)
    else:
        other = np.array(COLOURS["white"], np.float32)
        t = (y / h)[..., None]
        img = base * (1 - t) + other * t * 0.7 + base * t * 0.3
    floor_y = int(h * 0.86)
    img[floor_y:] = np.array(COLOURS[camera["floor"]], np.float32) * 0.85
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for name, fx in zip(camera["objects"], camera["object_x"]):
        _draw_scenery(draw, name, fx * w, h, w, floor_y)
    return np.asarray(image)


def _draw_scenery(draw: ImageDraw.ImageDraw, name: str, x: float, h: int, w: int, floor_y: int) -> None:
    if name == "tree":
        draw.rectangle((x - w * 0.04, h * 0.35, x + w * 0.04, floor_y), fill=(95, 60, 30))
        draw.ellipse((x - w * 0.22, h * 0.05, x + w * 0.22, h * 0.42), fill=(40, 115, 40))
    elif name == "bench":
        top = floor_y - h * 0.12
        draw.rectangle((x - w * 0.2, top, x + w * 0.2, top + h * 0.025), fill=(130, 85, 45))
        draw.rectangle((x - w * 0.2, top - h * 0.07, x + w * 0.2, top - h * 0.05), fill=(130, 85, 45))
        for dx in (-0.17, 0.15):
            draw.rectangle((x + w * dx, top, x + w * (dx + 0.03), floor_y), fill=(60, 60, 60))
    elif name == "door":
        draw.rectangle((x - w * 0.14, h * 0.3, x + w * 0.14, floor_y), fill=(80, 50, 30), outline=(40, 25, 15))
        draw.ellipse((x + w * 0.08, h * 0.6, x + w * 0.11, h * 0.62), fill=(220, 200, 60))
    elif name == "window":
        box = (x - w * 0.15, h * 0.12, x + w * 0.15, h * 0.36)
        draw.rectangle(box, fill=(170, 210, 235), outline=(240, 240, 240), width=max(1, w // 40))
        draw.line((x, box[1], x, box[3]), fill=(240, 240, 240), width=max(1, w // 50))
        draw.line((box[0], h * 0.24, box[2], h * 0.24), fill=(240, 240, 240), width=max(1, w // 50))
    elif name == "lamp post":
        draw.rectangle((x - w * 0.015, h * 0.1, x + w * 0.015, floor_y), fill=(50, 50, 55))
        draw.ellipse((x - w * 0.05, h * 0.07, x + w * 0.05, h * 0.13), fill=(250, 240, 170))


def _limb(draw: ImageDraw.ImageDraw, start: tuple[float, float], angle: float, length: float, width: float,
          colours: list[tuple[tuple[int, ...], float]]) -> tuple[float, float]:
    """A straight limb from ``start`` at ``angle`` (radians from straight down), painted in (colour, fraction)
    pieces from the joint outwards; returns the end point."""
    dx, dy = math.sin(angle), math.cos(angle)
    pos = 0.0
    x0, y0 = start
    for colour, fraction in colours:
        a = (x0 + dx * length * pos, y0 + dy * length * pos)
        pos += fraction
        b = (x0 + dx * length * pos, y0 + dy * length * pos)
        draw.line((a, b), fill=colour, width=max(1, round(width)))
        r = width / 2
        draw.ellipse((b[0] - r, b[1] - r, b[0] + r, b[1] + r), fill=colour)
    return x0 + dx * length, y0 + dy * length


def draw_person(draw: ImageDraw.ImageDraw, person: dict[str, Any], pose: dict[str, Any], cx: float, foot_y: float,
                size: float) -> tuple[float, float, float, float]:
    """Draw an articulated figure ``size`` pixels tall standing on ``foot_y``; returns its box (x0, y0, x1, y1)."""
    s, b = size, person["build"]
    top = foot_y - s
    skin = _rgb(person["skin"], SKIN_TONES)
    hair = _rgb(person["hair_colour"], HAIR_COLOURS)
    upper, lower = _rgb(person["upper_colour"]), _rgb(person["lower_colour"])
    shoes = _rgb(person["shoes_colour"])
    back = pose["view"] == "back"
    r = 0.068 * s
    head = (cx, top + r)
    shoulder_y, hip_y = top + 0.16 * s, top + 0.52 * s
    sw, hw = 0.12 * s * b, 0.095 * s * b
    limb_w = 0.055 * s * b
    bag = _rgb(person["bag_colour"]) if person["bag"] != "none" else None
    bag_side = pose["bag_side"]

    if person["hair_length"] == "long":
        draw.rectangle((cx - r * 1.05, head[1], cx + r * 1.05, shoulder_y + 0.12 * s), fill=hair)
    if person["bag"] == "backpack" and not back:
        draw.rectangle((cx - sw * 1.25, shoulder_y + 0.02 * s, cx + sw * 1.25, shoulder_y + 0.3 * s), fill=bag)

    sleeve = [(upper, 0.5), (skin, 0.38), (skin, 0.12)] if person["upper_type"] == "t-shirt" else \
        [(upper, 0.88), (skin, 0.12)]
    for side, angle in ((-1, pose["arm_left"]), (1, pose["arm_right"])):
        _limb(draw, (cx + side * (sw - limb_w * 0.4), shoulder_y + limb_w * 0.4), side * angle, 0.38 * s, limb_w,
              sleeve)

    legs = {"trousers": [(lower, 0.93)], "shorts": [(lower, 0.4), (skin, 0.53)], "skirt": [(skin, 0.93)]}
    leg_colours = legs[person["lower_type"]] + [(shoes, 0.07)]
    leg_len = foot_y - hip_y
    for side, angle in ((-1, pose["leg_left"]), (1, pose["leg_right"])):
        _limb(draw, (cx + side * hw * 0.5, hip_y), side * angle, leg_len - limb_w * 0.5, limb_w * 1.25, leg_colours)

    draw.polygon([(cx - sw, shoulder_y), (cx + sw, shoulder_y), (cx + hw, hip_y + 0.02 * s),
                  (cx - hw, hip_y + 0.02 * s)], fill=upper)
    draw.rectangle((cx - hw, hip_y - 0.01 * s, cx + hw, hip_y + 0.06 * s), fill=lower)
    if person["lower_type"] == "skirt":
        draw.polygon([(cx - hw, hip_y), (cx + hw, hip_y), (cx + hw * 1.5, hip_y + 0.22 * s),
                      (cx - hw * 1.5, hip_y + 0.22 * s)], fill=lower)
    if person["upper_type"] == "jacket" and not back:
        draw.line((cx, shoulder_y + 0.02 * s, cx, hip_y), fill=_shade(upper, 0.55), width=max(1, round(0.012 * s)))

    if person["bag"] == "backpack":
        if back:
            draw.rounded_rectangle((cx - sw * 0.75, shoulder_y + 0.03 * s, cx + sw * 0.75, shoulder_y + 0.3 * s),
                                   radius=0.02 * s, fill=bag)
        else:
            for side in (-1, 1):
                draw.line((cx + side * sw * 0.55, shoulder_y, cx + side * sw * 0.6, shoulder_y + 0.22 * s),
                          fill=bag, width=max(1, round(0.02 * s)))
    elif person["bag"] == "handbag":
        hx = cx + bag_side * (sw + limb_w * 0.9)
        draw.line((cx - bag_side * sw * 0.5, shoulder_y, hx, hip_y - 0.02 * s), fill=bag,
                  width=max(1, round(0.012 * s)))
        draw.rectangle((hx - 0.06 * s, hip_y - 0.03 * s, hx + 0.06 * s, hip_y + 0.08 * s), fill=bag)

    draw.rectangle((cx - r * 0.35, head[1] + r * 0.6, cx + r * 0.35, shoulder_y + 1), fill=skin)
    draw.ellipse((head[0] - r, head[1] - r, head[0] + r, head[1] + r), fill=hair if back else skin)
    draw.chord((head[0] - r * 1.05, head[1] - r * 1.1, head[0] + r * 1.05, head[1] + r * 0.9), 180, 360, fill=hair)
    if person["hat"] == "cap":
        hat = _rgb(person["hat_colour"])
        draw.chord((head[0] - r * 1.1, head[1] - r * 1.25, head[0] + r * 1.1, head[1] + r * 0.5), 180, 360, fill=hat)
        brim = pose["bag_side"] * r * 1.7 if not back else 0.0
        draw.rectangle((min(head[0], head[0] + brim) - r * 0.6, head[1] - r * 0.45,
                        max(head[0], head[0] + brim) + r * 0.6, head[1] - r * 0.2), fill=hat)
    width = sw + 0.38 * s * math.sin(max(pose["arm_left"], pose["arm_right"], 0.0)) + limb_w
    return cx - width, top, cx + width, foot_y


def sample_pose(rng: np.random.Generator) -> dict[str, Any]:
    stride = float(rng.uniform(0.0, 0.28))
    swing = float(rng.uniform(-0.08, 0.45))
    return {
        "view": _choice(rng, ("front", "back")),
        "arm_left": round(float(rng.uniform(0.05, 0.3)) + swing * 0.3, 3),
        "arm_right": round(float(rng.uniform(0.05, 0.3)) + swing * 0.3, 3),
        "leg_left": round(0.04 + stride / 2, 3),
        "leg_right": round(0.04 + stride / 2, 3),
        "bag_side": int(rng.choice((-1, 1))),
    }


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, kind: str, figure: tuple[float, ...],
                   h: int, w: int) -> dict[str, Any]:
    """Draw one occluder over the figure's box; returns its attributes (for the bg caption)."""
    x0, top, x1, foot = figure
    size = foot - top
    cx = (x0 + x1) / 2
    if kind == "railing":
        colour = _choice(rng, ("grey", "black", "white", "green"))
        rail_top = foot - size * rng.uniform(0.4, 0.65)
        bar = max(2, round(h * 0.018))
        for y in np.linspace(rail_top, h, 4):
            draw.rectangle((0, y, w, y + bar), fill=_rgb(colour))
        step = max(4.0, w * rng.uniform(0.09, 0.14))
        for x in np.arange(rng.uniform(0, step), w, step):
            draw.rectangle((x, rail_top, x + step * 0.45, h), fill=_shade(COLOURS[colour], 0.85))
        return {"type": "railing", "colour": colour}
    if kind == "car":
        colour = _choice(rng, tuple(COLOURS))
        roof = foot - size * rng.uniform(0.4, 0.65)
        body = roof + (h - roof) * 0.35
        draw.rounded_rectangle((-w * 0.2, roof, w * 1.2, h + 10), radius=h * 0.05, fill=_rgb(colour))
        draw.rectangle((w * 0.05, roof + (body - roof) * 0.15, w * 0.95, body), fill=(60, 75, 95, 255))
        for wx in (w * 0.12, w * 0.88):
            draw.ellipse((wx - w * 0.13, h - w * 0.13, wx + w * 0.13, h + w * 0.13), fill=(20, 20, 20, 255))
        return {"type": "car", "colour": colour}
    if kind == "pole":
        colour = _choice(rng, ("grey", "yellow", "black", "red", "white"))
        half = w * rng.uniform(0.08, 0.14)
        px = cx + rng.uniform(-0.5, 0.5) * (x1 - x0) * 0.4
        draw.rectangle((px - half, 0, px + half, h), fill=_rgb(colour))
        if rng.random() < 0.5:
            draw.rectangle((px - half * 1.8, h * 0.15, px + half * 1.8, h * 0.3), fill=(30, 90, 170, 255))
        return {"type": "pole", "colour": colour}
    other = sample_person(rng)
    side = int(rng.choice((-1, 1)))
    ox = cx + side * w * rng.uniform(0.22, 0.42)
    draw_person(draw, other, sample_pose(rng), ox, min(h - 1.0, foot + size * 0.08), size * rng.uniform(1.0, 1.12))
    return {"type": "person", "person": other}


def render(job: Job, seed: int, height: int, width: int) -> tuple[str, bytes, dict[str, Any]]:
    """Draw one image: the camera's scene, the person, maybe an occluder; light, jitter, noise; JPEG bytes."""
    rng = np.random.default_rng((seed, job.index))
    h, w = height * SUPERSAMPLE, width * SUPERSAMPLE
    pad = max(2, w // 16)
    scene = camera_background(job.camera, h + 2 * pad, w + 2 * pad)
    oy, ox = rng.integers(0, 2 * pad + 1, size=2)
    canvas = Image.fromarray(scene[oy: oy + h, ox: ox + w])

    pose = sample_pose(rng)
    figure_layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    size = h * float(rng.uniform(0.8, 0.9)) * job.person["height"]
    foot_y = h * float(rng.uniform(0.93, 0.985))
    cx = w * (0.5 + float(rng.uniform(-0.1, 0.1)))
    box = draw_person(ImageDraw.Draw(figure_layer), job.person, pose, cx, foot_y, size)
    canvas.paste(figure_layer, (0, 0), figure_layer)

    occluders: list[dict[str, Any]] = []
    coverage = 0.0
    if rng.random() < job.occlusion_rate:
        mix = job.camera["occluder_mix"]
        kind = _choice(rng, OCCLUDERS, p=list(np.array([mix[k] for k in OCCLUDERS]) / sum(mix.values())))
        occluder_layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        occluders.append(_draw_occluder(ImageDraw.Draw(occluder_layer), rng, kind, box, h, w))
        figure_mask = np.asarray(figure_layer)[..., 3] > 0
        hidden = figure_mask & (np.asarray(occluder_layer)[..., 3] > 0)
        coverage = float(hidden.sum() / max(1, figure_mask.sum()))
        occluders[-1]["coverage"] = round(coverage, 3)
        canvas.paste(occluder_layer, (0, 0), occluder_layer)

    small = canvas.reduce(SUPERSAMPLE)
    light = LIGHTS[job.camera["light"]] * float(rng.uniform(0.93, 1.07))
    gain = np.array(CASTS[job.camera["cast"]], np.float32) * light * rng.uniform(0.97, 1.03, size=3)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(rng.uniform(2.0, 6.0))
    pixels = np.asarray(small, np.float32) * gain.astype(np.float32) + noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=JPEG_QUALITY)
    scene_attributes = {k: job.camera[k] for k in ("texture", "colour", "floor", "light", "cast", "objects")}
    record = {
        "image": job.image, "split": job.split, "pid": job.pid, "camid": job.cam,
        "person": job.person, "pose": pose, "scene": scene_attributes, "occluders": occluders,
    }
    return job.image, buffer.getvalue(), record


def _render_star(args: tuple[Job, int, int, int]) -> tuple[str, bytes, dict[str, Any]]:
    return render(*args)


# ---------------------------------------------------------------- captions


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _garments(person: dict[str, Any]) -> tuple[str, str]:
    upper = f"{_a(person['upper_colour'])} {person['upper_type']}"
    lower_type = person["lower_type"]
    lower = f"{_a(person['lower_colour'])} skirt" if lower_type == "skirt" else f"{person['lower_colour']} {lower_type}"
    return upper, lower


def _build_words(person: dict[str, Any]) -> str:
    words = []
    if person["height"] >= 0.95:
        words.append("tall")
    elif person["height"] <= 0.88:
        words.append("short")
    if person["build"] >= 1.1:
        words.append("broad")
    elif person["build"] <= 0.93:
        words.append("slim")
    return " ".join(words)


def describe_person(person: dict[str, Any], variant: int = 0, view: str | None = None) -> str:
    upper, lower = _garments(person)
    hair = f"{person['hair_length']} {person['hair_colour']} hair"
    extras = [f"{person['shoes_colour']} shoes"]
    if person["hat"] != "none":
        extras.insert(0, f"{_a(person['hat_colour'])} cap")
    carrying = {"backpack": "carrying {} backpack", "handbag": "holding {} handbag"}.get(person["bag"], "")
    if carrying:
        carrying = carrying.format(_a(person["bag_colour"]))
    build = _build_words(person)
    who = f"{build} {person['gender']}".strip()
    seen = " seen from behind" if view == "back" else ""
    if variant % 3 == 0:
        text = f"{_a(who).capitalize()}{seen} with {hair} wearing {upper} and {lower}, with {_join(extras)}"
    elif variant % 3 == 1:
        text = f"The {person['gender']}{seen} has {hair} and wears {upper}, {lower} and {_join(extras)}"
    else:
        text = f"{_a(who).capitalize()} in {upper} and {lower}{seen}, with {hair} and {_join(extras)}"
    return text + (f", {carrying}." if carrying else ".")


_SCENES = {
    "bricks": "{a} brick wall", "grass": "a park with {colour} grass under a pale sky",
    "tiles": "a wall of {colour} tiles", "stripes": "a shop front with {colour} and white stripes",
    "gradient": "a plain {colour} wall",
}
_LIGHT_WORDS = {"dim": "under dim light", "normal": "in daylight", "bright": "in bright light"}
_CAST_WORDS = {"neutral": "", "warm": " with a warm yellow tint", "cool": " with a cool blue tint"}
_HIDES = {
    "railing": "a {colour} metal railing {how} hides the person's legs",
    "car": "{a} car in front {how} hides the lower body",
    "pole": "{a} pole {how} blocks the view of the person",
    "person": "another person in {garment} stands in front and {how} hides the person",
}


def describe_scene(scene: dict[str, Any], occluders: list[dict[str, Any]], variant: int = 0) -> str:
    colour = scene["colour"]
    place = _SCENES[scene["texture"]].format(colour=colour, a=_a(colour))
    things = [_a(name) if name != "lamp post" else "a lamp post" for name in scene["objects"]]
    light = _LIGHT_WORDS[scene["light"]] + _CAST_WORDS[scene["cast"]]
    if variant % 2 == 0:
        text = f"{place.capitalize()} {light} above a {scene['floor']} pavement; {_join(things)} in the scene"
    else:
        text = f"The person stands on a {scene['floor']} pavement in front of {place} {light}; there is {_join(things)}"
    if not occluders:
        return text + (". Nothing hides the person." if variant % 2 == 0 else "; the person is fully visible.")
    hides = []
    for occ in occluders:
        how = "largely" if occ.get("coverage", 0.0) > 0.4 else "partly"
        garment = _garments(occ["person"])[0] if occ["type"] == "person" else ""
        colour = occ.get("colour", "")
        hides.append(_HIDES[occ["type"]].format(colour=colour, a=_a(colour) if colour else "", how=how,
                                                garment=garment))
    return text + "; " + _join(hides) + "."


def describe(attributes: dict[str, Any]) -> tuple[str, str]:
    """The (fg, bg) captions of one ``attributes.jsonl`` record; the template varies with the image path only,
    so the same record always gives the same captions."""
    variant = zlib.crc32(attributes["image"].encode("utf-8"))
    view = attributes.get("pose", {}).get("view")
    fg = describe_person(attributes["person"], variant, view)
    bg = describe_scene(attributes["scene"], attributes.get("occluders", []), variant >> 4)
    return fg, bg


RECORD_KEYS = ("image", "pid", "camid", "person", "scene", "occluders")


def read_attributes(path: str | Path) -> dict[str, dict[str, Any]]:
    """``attributes.jsonl`` as image relpath -> record; a malformed line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise SynthError(f"attributes file {path} does not exist (write it with `fba synth`)")
    records: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            record = parse_object(line, where, RECORD_KEYS, SynthError)
            if record["image"] in records:
                raise SynthError(f"{where}: duplicate image {record['image']!r}")
            records[record["image"]] = record
    return records


# ---------------------------------------------------------------- the generator


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
    if out.exists() and not out.is_dir():
        problems.append(f"output {out} exists and is not a directory")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        problems.append(f"output directory {out} exists and is not empty (pass --overwrite to replace it)")
    if problems:
        raise SynthError("fba synth: " + "; ".join(problems))


def _rendered(jobs: list[Job], seed: int, height: int, width: int, workers: int) -> Iterator[tuple[str, bytes, dict]]:
    tasks = [(job, seed, height, width) for job in jobs]
    if workers == 1:
        yield from map(_render_star, tasks)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_render_star, tasks, chunksize=16)


def generate(out: str | Path, ids: int = 50, cams: int = 4, seed: int = 0, occluded: bool = False,
             per_camera: int = 6, height: int = 128, width: int = 64, distractors: int | None = None,
             workers: int = 1, overwrite: bool = False, progress: bool = True) -> SynthSummary:
    """Write the synthetic set under ``out``: the three Market folders, ``captions.jsonl``, ``attributes.jsonl``
    and ``meta.json``. ``distractors`` defaults to ``max(cams, ids // 5)`` id-0 gallery images."""
    out = Path(out)
    distractors = max(cams, ids // 5) if distractors is None else distractors
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
        file.writelines(caption_line(r["image"], Caption(*describe(r))) for r in records)

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
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return SynthSummary(out, counts, len(jobs), ids, cams, occluded, seconds, len(jobs) / max(seconds, 1e-9),
                        ids_per_split)


def _cameras(jobs: list[Job]) -> list[dict[str, Any]]:
    cameras = {job.cam: job.camera for job in jobs}
    return [cameras[c] for c in sorted(cameras)]


# ---------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (Market-1501 layout + captions)")
    parser.add_argument("--ids", type=int, default=50, help="identities: 1..ids/2 train, the rest test")
    parser.add_argument("--cams", type=int, default=4, help="cameras, each with its own background")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--occluded", action="store_true", help="railings, cars, poles and people in front")
    parser.add_argument("--per-camera", type=int, default=6, help="images of each identity in each of its cameras")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--distractors", type=int, default=None, help="id-0 gallery images (default max(cams, ids/5))")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images (output is the same)")
    parser.add_argument("--overwrite", action="store_true", help="replace the generated files in a non-empty --out")


def run(args: argparse.Namespace) -> int:
    try:
        summary = generate(args.out, ids=args.ids, cams=args.cams, seed=args.seed, occluded=args.occluded,
                           per_camera=args.per_camera, height=args.height, width=args.width,
                           distractors=args.distractors, workers=args.workers, overwrite=args.overwrite)
    except SynthError as err:
        print(err)
        return 2
    print(summary)
    return 0
