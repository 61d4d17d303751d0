"""Captions of a synthetic image from its ``attributes.jsonl`` record: a foreground sentence about the person and
a background sentence about the scene and what hides the person.

:func:`describe` writes them from the truth, with the template chosen by the image path only, so the same
record always gives the same captions. This module needs no image code: ``fba caption --backend template``
imports it (and :mod:`.attributes`) alone.
"""
from __future__ import annotations

import zlib
from typing import Any

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
