"""What the synthetic set is made of: the attribute vocabulary, how identities, cameras and poses are sampled,
and the ``attributes.jsonl`` record format (the ground truth of every image).

Drawing (:mod:`.drawing`) turns these attributes into pixels and captioning (:mod:`.captions`) into words; both
read this module and nothing else of the generator, so the template caption backend needs no image code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fba.errors import InputError
from fba.utils.jsonl import parse_object

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
SHOE_COLOURS = ("black", "white", "brown", "grey", "red", "blue")

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


def choose(rng: np.random.Generator, options: tuple[str, ...] | list[str], p: list[float] | None = None) -> str:
    return str(options[int(rng.choice(len(options), p=p))])


def sample_person(rng: np.random.Generator, upper: str | None = None, lower: str | None = None) -> dict[str, Any]:
    """The fixed attributes of one identity; ``upper``/``lower`` pin the clothing colours (kept distinct per id)."""
    names = list(COLOURS)
    gender = choose(rng, ("man", "woman"))
    bag = choose(rng, BAGS, p=[0.4, 0.35, 0.25])
    hat = choose(rng, HATS, p=[0.75, 0.25])
    return {
        "gender": gender,
        "hair_length": choose(rng, ("short", "long"), p=[0.85, 0.15] if gender == "man" else [0.25, 0.75]),
        "hair_colour": choose(rng, tuple(HAIR_COLOURS)),
        "skin": choose(rng, tuple(SKIN_TONES)),
        "upper_type": choose(rng, UPPER_TYPES),
        "upper_colour": upper or choose(rng, names),
        "lower_type": choose(rng, LOWER_TYPES[gender]),
        "lower_colour": lower or choose(rng, names),
        "shoes_colour": choose(rng, SHOE_COLOURS),
        "bag": bag,
        "bag_colour": choose(rng, names) if bag != "none" else None,
        "hat": hat,
        "hat_colour": choose(rng, names) if hat != "none" else None,
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
        "colour": choose(rng, colours),
        "floor": choose(rng, ("grey", "beige", "brown", "white")),
        "light": choose(rng, tuple(LIGHTS)),
        "cast": choose(rng, tuple(CASTS)),
        "objects": [SCENERY[i] for i in objects],
        "object_x": [round(float(rng.uniform(0.05, 0.8)), 3) for _ in objects],
        "occluder_mix": {name: round(float(w), 3) for name, w in zip(OCCLUDERS, weights)},
        "texture_seed": int(rng.integers(2**31)),
    }


def sample_cameras(rng: np.random.Generator, cams: int) -> list[dict[str, Any]]:
    """Textures go round the cameras in a shuffled order, so up to five cameras all look different."""
    order = rng.permutation(len(TEXTURES))
    return [sample_camera(rng, c, TEXTURES[order[c % len(TEXTURES)]]) for c in range(cams)]


def sample_pose(rng: np.random.Generator) -> dict[str, Any]:
    stride = float(rng.uniform(0.0, 0.28))
    swing = float(rng.uniform(-0.08, 0.45))
    return {
        "view": choose(rng, ("front", "back")),
        "arm_left": round(float(rng.uniform(0.05, 0.3)) + swing * 0.3, 3),
        "arm_right": round(float(rng.uniform(0.05, 0.3)) + swing * 0.3, 3),
        "leg_left": round(0.04 + stride / 2, 3),
        "leg_right": round(0.04 + stride / 2, 3),
        "bag_side": int(rng.choice((-1, 1))),
    }


# ---------------------------------------------------------------- attributes.jsonl

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
