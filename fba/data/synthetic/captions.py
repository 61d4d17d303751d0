"""Captions of a synthetic image from its ``attributes.jsonl`` record: a foreground sentence about the person and
a background sentence about the scene and what hides the person.

With ``noise=0`` :func:`describe` writes them from the truth, with the template chosen by the image path only.
With ``noise>0`` it writes what a vision-language captioner plausibly reports (:mod:`.noise`: confused colours,
missed, invented and leaked items) in varied wording, drawn from ``(seed, image)``. Either way the same record,
seed and level always give the same captions. This module needs no image code: ``fba caption --backend
template`` imports it (with :mod:`.attributes` and :mod:`.noise`) alone.
"""
from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np

from .noise import noise_rng, perceive_person, perceive_scene, rate, SYNONYM_RATE

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
        text = f"{place.capitalize()} {light} above a {scene['floor']} pavement"
        text += f"; {_join(things)} in the scene" if things else ""
    else:
        text = f"The person stands on a {scene['floor']} pavement in front of {place} {light}"
        text += f"; there is {_join(things)}" if things else ""
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


_SYNONYMS = {
    "trousers": ("pants", "jeans"), "t-shirt": ("T-shirt", "tee", "short-sleeved top"),
    "long-sleeved shirt": ("long-sleeved top", "sweater"), "jacket": ("coat",), "man": ("male", "guy"),
    "woman": ("lady", "female"), "grey": ("gray",), "backpack": ("rucksack",), "handbag": ("bag", "purse"),
    "cap": ("baseball cap", "hat"), "shoes": ("sneakers", "footwear"), "shorts": ("short pants",),
    "skirt": ("dress",),
}
_SYNONYM_WORDS = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _SYNONYMS), key=len, reverse=True)) + r")\b")


def _reword(text: str, level: float, rng: np.random.Generator) -> str:
    """Each word with synonyms is replaced by one of them at ``SYNONYM_RATE`` x level (one draw per word)."""
    p = rate(SYNONYM_RATE, level)

    def swap(match: re.Match) -> str:
        word = match.group(0)
        return str(rng.choice(_SYNONYMS[word])) if rng.random() < p else word

    return _SYNONYM_WORDS.sub(swap, text)


def describe_seen(seen: dict[str, Any], view: str | None, rng: np.random.Generator) -> str:
    """The foreground sentence of :func:`.noise.perceive_person`'s output, in one of six wordings (the three
    truth templates and three in the style of LLaVA's answers); left-out items are simply not named."""
    clothes = []
    if seen["upper"]:
        clothes.append(f"{_a(seen['upper_colour'])} {seen['upper_type']}")
    if seen["lower"]:
        lower_type = seen["lower_type"]
        clothes.append(f"{_a(seen['lower_colour'])} skirt" if lower_type == "skirt"
                       else f"{seen['lower_colour']} {lower_type}")
    hair = f"{seen['hair_length']} {seen['hair_colour']} hair"
    extras = [f"{seen['shoes_colour']} shoes"] if seen["shoes"] else []
    if seen["hat"]:
        extras.insert(0, f"{_a(seen['hat_colour'])} cap")
    extras += [item if item == "sunglasses" else _a(item) for item in seen["extras"]]
    carrying = ""
    if seen["bag"]:
        verb = "carrying" if seen["bag"] == "backpack" else "holding"
        carrying = f"{verb} {_a(seen['bag_colour'])} {seen['bag']}"
    build = _build_words(seen) if seen["build"] else ""
    who = f"{build} {seen['gender']}".strip()
    seen_from = " seen from behind" if view == "back" else ""
    wearing = _join(clothes) if clothes else "clothes that are hard to make out"
    with_extras = f", with {_join(extras)}" if extras else ""
    template = int(rng.integers(6))
    if template == 0:
        text = f"{_a(who).capitalize()}{seen_from} with {hair} wearing {wearing}{with_extras}"
    elif template == 1:
        text = f"The {seen['gender']}{seen_from} has {hair} and wears {_join(clothes + extras) if clothes or extras else wearing}"
    elif template == 2:
        text = f"{_a(who).capitalize()} in {wearing}{seen_from}, with {_join([hair, *extras])}"
    elif template == 3:
        text = f"The person in the image is {_a(who)}{seen_from} wearing {wearing}{with_extras}, and has {hair}"
    elif template == 4:
        text = f"In the image, {_a(who)} with {hair} is walking{seen_from}. The {seen['gender']} is dressed in {wearing}"
        text += f" and has {_join(extras)}" if extras else ""
    else:
        text = f"{_a(who).capitalize()} dressed in {wearing}{seen_from}{with_extras}; the hair is {hair[:-5]}"
    return text + (f", {carrying}." if carrying else ".")


def describe(attributes: dict[str, Any], noise: float = 0.0, seed: int = 0) -> tuple[str, str]:
    """The (fg, bg) captions of one ``attributes.jsonl`` record. ``noise=0``: from the truth, the template
    varying with the image path only. ``noise>0``: what a captioner plausibly reports at that level, drawn from
    ``(seed, image)`` (:mod:`.noise`)."""
    view = attributes.get("pose", {}).get("view")
    if noise <= 0:
        variant = zlib.crc32(attributes["image"].encode("utf-8"))
        fg = describe_person(attributes["person"], variant, view)
        bg = describe_scene(attributes["scene"], attributes.get("occluders", []), variant >> 4)
        return fg, bg
    rng = noise_rng(seed, attributes["image"])
    fg = _reword(describe_seen(perceive_person(attributes, noise, rng), view, rng), noise, rng)
    scene, occluders = perceive_scene(attributes, noise, rng)
    return fg, describe_scene(scene, occluders, int(rng.integers(2)))
