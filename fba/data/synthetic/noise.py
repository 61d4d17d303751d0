"""What a vision-language captioner plausibly reports about a synthetic image, instead of the truth.

Real captions (LLaVA-1.5 on person crops, as FBA uses them) are informative but wrong often enough: colours
are confused under the camera's light, items hidden by an occluder or by the viewpoint are left out, items that
are not there are invented, and an occluder or a background object is described as the person's clothing.
:func:`perceive` turns an ``attributes.jsonl`` record into what such a captioner would see, with every error
drawn at a named rate below times ``level`` (0: the truth; 1: our estimate of LLaVA-1.5 on low-resolution
person crops; rates are clipped to 1). The rates are estimates from reading LLaVA-style captions of person
crops and from the object-hallucination literature, not measurements on this data; each says why.

The truth stays in ``attributes.jsonl``: only the captions change. The draw for an image comes from
``default_rng((seed, NOISE_STREAM, crc32(image)))``, so the noisy captions are a function of the record, the
seed and the level, whatever order the images are captioned in.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from .attributes import COLOURS, SynthError, choose

NOISE_STREAM = 0xCA97
# The level the demo and the ablation use: every rate below as stated.
REALISTIC_LEVEL = 1.0

# A colour word is wrong this often in neutral daylight: the garments are a few pixels wide at 128x64 and
# JPEG-blurred, and LLaVA-style models confuse neighbouring hues (navy/black, beige/white) on such crops.
COLOUR_CONFUSION = 0.12
# Light scales the colour confusion: dim light crushes dark colours together and bright light washes pale
# ones out, the two conditions under which captioners miss colours most.
LIGHT_FACTOR = {"dim": 2.0, "normal": 1.0, "bright": 1.4}
# A coloured cast shifts every hue the same way, so a captioner reading the pixels reports the shifted colour.
CAST_FACTOR = {"neutral": 1.0, "warm": 1.5, "cool": 1.5}
# Under a coloured or dim light most confusions follow that light (white turns beige under warm light), so the
# errors are systematic per camera, as a real camera's white balance makes them; the rest go to a similar hue.
LIGHT_SHIFT_SHARE = 0.7
# An item behind an occluder (legs behind a railing or car, a bag behind another person) is left out this
# often: a captioner describes what is visible, and it guesses the rest only now and then.
HIDDEN_OMISSION = 0.6
# A hidden item that is still mentioned takes the occluder's colour this often (the red car becomes "red
# trousers", the other person's shirt becomes this person's): the classic foreground/background confusion FBA
# is built against.
HIDDEN_LEAK = 0.3
# A backpack seen from the front shows only its straps, and a jacket seen from behind has no visible zip, so
# the captioner misses the backpack, or calls the jacket a long-sleeved shirt, this often.
VIEW_MISS = 0.5
# Shoes are a handful of pixels at 128x64 and captioners often end the description before the feet.
SHOES_OMISSION = 0.3
# Height and build are relative judgements that a crop scaled to a fixed height hides; captioners rarely make them.
BUILD_OMISSION = 0.6
# Gender from a low-resolution pedestrian crop is right most of the time but not always.
GENDER_ERROR = 0.05
# Long hair tied back or hidden by a collar is read as short (and the other way round) now and then.
HAIR_LENGTH_ERROR = 0.1
# One invented item per caption this often (a bag, a cap, sunglasses, a scarf): object-hallucination studies
# (CHAIR on COCO) put LLaVA-1.5 at roughly one invented object in ten mentioned.
INVENTED_ITEM = 0.1
# A garment takes the colour of the wall or grass behind the person this often: on a small crop the figure's
# edges blend into the background, and the dominant background colour leaks into the description.
SCENE_LEAK = 0.06
# The captioner words the same thing differently from image to image (pants/trousers, tee/t-shirt).
SYNONYM_RATE = 0.5
# The background caption misses an occluder this often (a railing at the frame's edge reads as scenery).
OCCLUDER_MISS = 0.2
# The background caption leaves out each scenery object this often: captioners list the salient things only.
SCENERY_OMISSION = 0.25

SIMILAR_COLOURS = {
    "red": ("orange", "pink", "brown"), "blue": ("navy", "purple", "teal"), "green": ("teal",),
    "yellow": ("orange", "beige"), "black": ("navy", "grey", "brown"), "white": ("grey", "beige"),
    "grey": ("white", "black", "beige"), "purple": ("navy", "blue", "pink"), "orange": ("red", "yellow", "brown"),
    "pink": ("red", "purple", "white"), "brown": ("black", "beige", "orange"), "navy": ("black", "blue"),
    "beige": ("white", "yellow", "brown"), "teal": ("green", "blue"),
}
SIMILAR_HAIR = {"black": ("brown",), "brown": ("black", "red"), "blonde": ("brown", "grey"),
                "grey": ("blonde", "black"), "red": ("brown",)}
# What each light or cast turns a colour into (only the colours it moves).
LIGHT_SHIFTS = {
    "dim": {"white": "grey", "grey": "black", "navy": "black", "brown": "black", "blue": "navy", "purple": "navy",
            "beige": "grey", "green": "teal", "red": "brown", "yellow": "beige", "teal": "navy"},
    "bright": {"grey": "white", "beige": "white", "yellow": "white", "pink": "white", "navy": "blue",
               "brown": "orange", "black": "grey"},
    "warm": {"white": "beige", "grey": "beige", "blue": "purple", "pink": "orange", "yellow": "orange",
             "teal": "green", "beige": "yellow"},
    "cool": {"white": "grey", "beige": "grey", "red": "purple", "purple": "blue", "green": "teal",
             "yellow": "green", "orange": "red"},
}
# What each occluder hides, by the person's items (the drawing's occluders: railings and cars cover the legs,
# a pole a vertical strip, another person one side of the body).
HIDDEN_ITEMS = {"railing": ("lower", "shoes"), "car": ("lower", "shoes", "bag"), "pole": ("bag",),
                "person": ("upper", "bag")}
HIDDEN_MIN_COVERAGE = 0.1
INVENTIONS = ("bag", "cap", "sunglasses", "scarf")


def check_level(level: float) -> float:
    """``level`` as a float, or a :class:`SynthError` when it is not a finite number >= 0."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise SynthError(f"caption noise level must be a number >= 0, got {level!r}") from None
    if not np.isfinite(value) or value < 0:
        raise SynthError(f"caption noise level must be a finite number >= 0, got {level!r}")
    return value


def noise_rng(seed: int, image: str) -> np.random.Generator:
    return np.random.default_rng((seed, NOISE_STREAM, zlib.crc32(image.encode("utf-8"))))


def rate(base: float, level: float) -> float:
    return min(1.0, base * level)


def confuse_colour(colour: str, scene: dict[str, Any], level: float, rng: np.random.Generator) -> str:
    """``colour`` as a captioner reports it under the camera's light and cast."""
    p = rate(COLOUR_CONFUSION * LIGHT_FACTOR[scene["light"]] * CAST_FACTOR[scene["cast"]], level)
    if rng.random() >= p:
        return colour
    shifts = [LIGHT_SHIFTS[c][colour] for c in (scene["light"], scene["cast"]) if colour in LIGHT_SHIFTS.get(c, {})]
    if shifts and rng.random() < LIGHT_SHIFT_SHARE:
        return choose(rng, shifts)
    return choose(rng, SIMILAR_COLOURS[colour])


def perceive_person(record: dict[str, Any], level: float, rng: np.random.Generator) -> dict[str, Any]:
    """The person as the captioner reports them: the record's ``person`` keys with the reported values, plus
    ``upper``/``lower``/``shoes`` (True, or None when left out), ``bag`` and ``hat`` (the kind, or None),
    ``build`` (whether build words are said) and ``extras`` (invented items, as phrases)."""
    truth, scene = record["person"], record["scene"]
    view = record.get("pose", {}).get("view")
    seen: dict[str, Any] = dict(truth, upper=True, lower=True, shoes=True, build=True, extras=[])
    seen["bag"] = truth["bag"] if truth["bag"] != "none" else None
    seen["hat"] = truth["hat"] if truth["hat"] != "none" else None

    if rng.random() < rate(GENDER_ERROR, level):
        seen["gender"] = "woman" if truth["gender"] == "man" else "man"
    if rng.random() < rate(HAIR_LENGTH_ERROR, level):
        seen["hair_length"] = "short" if truth["hair_length"] == "long" else "long"
    if rng.random() < rate(BUILD_OMISSION, level):
        seen["build"] = False
    if rng.random() < rate(SHOES_OMISSION, level):
        seen["shoes"] = None
    if view == "front" and seen["bag"] == "backpack" and rng.random() < rate(VIEW_MISS, level):
        seen["bag"] = None
    if view == "back" and truth["upper_type"] == "jacket" and rng.random() < rate(VIEW_MISS, level):
        seen["upper_type"] = "long-sleeved shirt"

    for key, field in (("upper", "upper_colour"), ("lower", "lower_colour"), ("shoes", "shoes_colour"),
                       ("bag", "bag_colour"), ("hat", "hat_colour")):
        if seen[key] is not None:
            seen[field] = confuse_colour(truth[field], scene, level, rng)
    if rng.random() < rate(COLOUR_CONFUSION * LIGHT_FACTOR[scene["light"]], level):
        seen["hair_colour"] = choose(rng, SIMILAR_HAIR[truth["hair_colour"]])

    for occluder in record.get("occluders", []):
        if occluder.get("coverage", 0.0) < HIDDEN_MIN_COVERAGE:
            continue
        leak = occluder["person"]["upper_colour"] if occluder["type"] == "person" else occluder.get("colour")
        for item in HIDDEN_ITEMS[occluder["type"]]:
            if seen[item] is None:
                continue
            if rng.random() < rate(HIDDEN_OMISSION, level):
                seen[item] = None
            elif leak and rng.random() < rate(HIDDEN_LEAK, level):
                seen[f"{item}_colour"] = leak

    if rng.random() < rate(SCENE_LEAK, level):
        item = choose(rng, [item for item in ("upper", "lower") if seen[item] is not None] or ["upper"])
        seen[item] = True
        seen[f"{item}_colour"] = scene["colour"]
    if rng.random() < rate(INVENTED_ITEM, level):
        invented, colour = choose(rng, INVENTIONS), choose(rng, tuple(COLOURS))
        if invented == "bag" and seen["bag"] is None:
            seen["bag"], seen["bag_colour"] = choose(rng, ("backpack", "handbag")), colour
        elif invented == "cap" and seen["hat"] is None:
            seen["hat"], seen["hat_colour"] = "cap", colour
        elif invented == "scarf":
            seen["extras"].append(f"{colour} scarf")
        else:
            seen["extras"].append("sunglasses")
    return seen


def perceive_scene(record: dict[str, Any], level: float, rng: np.random.Generator
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The scene and the occluders as the background caption reports them: the wall's colour under the same
    light rule as the clothes, scenery objects and occluders missed at their rates."""
    scene = dict(record["scene"])
    scene["colour"] = confuse_colour(scene["colour"], record["scene"], level, rng)
    scene["objects"] = [name for name in scene["objects"] if rng.random() >= rate(SCENERY_OMISSION, level)]
    occluders = [occ for occ in record.get("occluders", []) if rng.random() >= rate(OCCLUDER_MISS, level)]
    return scene, occluders
