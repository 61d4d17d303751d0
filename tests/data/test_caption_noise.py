"""Caption noise (``fba synth --caption-noise``): every error happens at its named rate times the level, the
captions say what was perceived, the truth and the images are untouched, and a seed gives the same bytes."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fba.cli import main as fba_main
from fba.data.synthetic import generate
from fba.data.synthetic import noise
from fba.data.synthetic.attributes import COLOURS, HAIR_COLOURS, SynthError, sample_person
from fba.data.synthetic.captions import describe, describe_seen
from fba.data.synthetic.noise import perceive_person, perceive_scene

N = 4000
TINY = dict(ids=8, cams=2, per_camera=2, height=64, width=32, occluded=True, progress=False)


def _scene(light: str = "normal", cast: str = "neutral", colour: str = "teal") -> dict:
    return {"texture": "tiles", "colour": colour, "floor": "grey", "light": light, "cast": cast,
            "objects": ["tree", "bench"]}


@functools.lru_cache(maxsize=None)
def _people(n: int, seed: int) -> tuple[dict, ...]:
    rng = np.random.default_rng(seed)
    return tuple(sample_person(rng) for _ in range(n))


def _records(n: int, scene: dict, view: str = "front", occluders: list | None = None, seed: int = 0,
             **pinned) -> list[dict]:
    return [{"image": f"query/{i:06d}.jpg", "person": {**person, **pinned}, "scene": scene, "pose": {"view": view},
             "occluders": occluders or []} for i, person in enumerate(_people(n, seed))]


def _perceived(records: list[dict], level: float = 1.0) -> list[dict]:
    return [perceive_person(r, level, noise.noise_rng(0, r["image"])) for r in records]


def _close(measured: float, expected: float, n: int) -> None:
    tolerance = 4 * np.sqrt(max(expected * (1 - expected), 1e-4) / n) + 0.005
    assert abs(measured - expected) <= tolerance, f"measured {measured:.4f}, expected {expected:.4f} ± {tolerance:.4f}"


def test_similarity_tables_cover_the_vocabulary() -> None:
    assert set(noise.SIMILAR_COLOURS) == set(COLOURS) and set(noise.SIMILAR_HAIR) == set(HAIR_COLOURS)
    for table in (noise.SIMILAR_COLOURS, noise.SIMILAR_HAIR):
        assert all(colour not in similar and similar for colour, similar in table.items())
    for shifts in noise.LIGHT_SHIFTS.values():
        assert all(a in COLOURS and b in COLOURS and a != b for a, b in shifts.items())


@pytest.mark.parametrize("level", [1.0, 0.5])
def test_colour_confusion_rate_follows_the_constant_and_the_light(level: float) -> None:
    for light, cast in (("normal", "neutral"), ("dim", "neutral"), ("normal", "warm")):
        seen = _perceived(_records(N, _scene(light, cast)), level)
        truth = _records(N, _scene(light, cast))
        said = [(s, t) for s, t in zip(seen, truth) if s["shoes"]]
        wrong = np.mean([s["shoes_colour"] != t["person"]["shoes_colour"] for s, t in said])
        expected = min(1.0, noise.COLOUR_CONFUSION * noise.LIGHT_FACTOR[light] * noise.CAST_FACTOR[cast] * level)
        _close(wrong, expected, len(said))


def test_confusions_under_a_coloured_light_mostly_follow_that_light() -> None:
    truth = _records(N, _scene("dim"), shoes_colour="white")
    seen = _perceived(truth)
    confused = [s["shoes_colour"] for s in seen if s["shoes"] and s["shoes_colour"] != "white"]
    # white under dim light shifts to grey; the other confusions go to white's neighbours (grey or beige)
    share = np.mean([c == "grey" for c in confused])
    expected = noise.LIGHT_SHIFT_SHARE + (1 - noise.LIGHT_SHIFT_SHARE) / len(noise.SIMILAR_COLOURS["white"])
    _close(share, expected, len(confused))


def test_omission_invention_and_identity_error_rates() -> None:
    truth = _records(N, _scene(), view="front", bag="none", bag_colour=None, hat="none", hat_colour=None)
    seen = _perceived(truth)
    _close(np.mean([s["shoes"] is None for s in seen]), noise.SHOES_OMISSION, N)
    _close(np.mean([not s["build"] for s in seen]), noise.BUILD_OMISSION, N)
    _close(np.mean([s["gender"] != t["person"]["gender"] for s, t in zip(seen, truth)]), noise.GENDER_ERROR, N)
    _close(np.mean([s["hair_length"] != t["person"]["hair_length"] for s, t in zip(seen, truth)]),
           noise.HAIR_LENGTH_ERROR, N)
    # with no bag and no hat every invention shows: a bag, a cap or an extra item
    invented = [bool(s["bag"] or s["hat"] or s["extras"]) for s in seen]
    _close(np.mean(invented), noise.INVENTED_ITEM, N)


def test_viewpoint_hides_a_front_backpack_and_a_back_zip() -> None:
    front = _perceived(_records(N, _scene(), view="front", bag="backpack", bag_colour="red"))
    _close(np.mean([s["bag"] is None for s in front]), noise.VIEW_MISS, N)
    back = _perceived(_records(N, _scene(), view="back", bag="backpack", bag_colour="red", upper_type="jacket"))
    assert all(s["bag"] == "backpack" for s in back if not s["extras"])
    _close(np.mean([s["upper_type"] != "jacket" for s in back]), noise.VIEW_MISS, N)


def test_occluded_items_are_left_out_or_take_the_occluders_colour() -> None:
    railing = [{"type": "railing", "colour": "white", "coverage": 0.5}]
    truth = _records(N, _scene(colour="teal"), occluders=railing, lower_colour="red", upper_colour="blue")
    seen = _perceived(truth)
    _close(np.mean([s["lower"] is None for s in seen]), noise.HIDDEN_OMISSION, N)
    said = [s for s in seen if s["lower"]]
    _close(np.mean([s["lower_colour"] == "white" for s in said]), noise.HIDDEN_LEAK, len(said))
    # the upper body is not behind a railing: never left out, never painted the railing's colour
    assert all(s["upper"] and s["upper_colour"] != "white" for s in seen)
    # another person in front lends their shirt colour to this person's upper garment
    other = [{"type": "person", "person": {**truth[0]["person"], "upper_colour": "yellow"}, "coverage": 0.5}]
    seen = _perceived(_records(N, _scene(colour="teal"), occluders=other, upper_colour="blue"))
    said = [s for s in seen if s["upper"]]
    _close(np.mean([s["upper_colour"] == "yellow" for s in said]), noise.HIDDEN_LEAK, len(said))
    # a barely touching occluder hides nothing
    slight = [{"type": "railing", "colour": "white", "coverage": noise.HIDDEN_MIN_COVERAGE / 2}]
    assert all(s["lower"] for s in _perceived(_records(500, _scene(), occluders=slight)))


def test_background_colour_leaks_into_the_clothes() -> None:
    truth = _records(N, _scene(colour="teal"), upper_colour="red", lower_colour="yellow")
    seen = _perceived(truth)
    leaked = np.mean([s["upper_colour"] == "teal" or s["lower_colour"] == "teal" for s in seen])
    _close(leaked, noise.SCENE_LEAK, N)


def test_background_caption_misses_scenery_and_occluders_at_their_rates() -> None:
    occluder = [{"type": "car", "colour": "red", "coverage": 0.5}]
    scenes = [perceive_scene({"image": f"q/{i}.jpg", "scene": _scene(), "occluders": occluder}, 1.0,
                             noise.noise_rng(0, f"q/{i}.jpg")) for i in range(N)]
    _close(np.mean([len(occ) == 0 for _, occ in scenes]), noise.OCCLUDER_MISS, N)
    _close(np.mean([len(scene["objects"]) for scene, _ in scenes]) / 2, 1 - noise.SCENERY_OMISSION, N)


def test_the_caption_says_what_was_perceived() -> None:
    rng = np.random.default_rng(5)
    for record in _records(400, _scene("dim", "warm"), view="front", seed=3):
        seen = perceive_person(record, 1.0, noise.noise_rng(1, record["image"]))
        text = describe_seen(seen, "front", rng)
        words = set(re.findall(r"[a-z-]+", text.lower()))
        if seen["upper"]:
            assert seen["upper_colour"] in words
        if seen["shoes"] is None:
            assert "shoes" not in words
        if seen["bag"] is None:
            assert not words & {"backpack", "handbag", "carrying", "holding"}
        else:
            assert seen["bag"] in words and seen["bag_colour"] in words


def test_level_zero_is_the_truth_and_levels_are_validated() -> None:
    record = _records(1, _scene())[0]
    assert describe(record, 0.0, 7) == describe(record)
    assert perceive_person(record, 0.0, noise.noise_rng(0, "x"))["upper_colour"] == record["person"]["upper_colour"]
    for bad in (-0.1, float("nan"), "high"):
        with pytest.raises(SynthError, match="caption noise level"):
            noise.check_level(bad)


def test_noisy_set_keeps_truth_and_images_and_a_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "clean", seed=0, **TINY)
    generate(tmp_path / "noisy", seed=0, caption_noise=1.0, **TINY)
    generate(tmp_path / "again", seed=0, caption_noise=1.0, **TINY)
    clean, noisy, again = (tmp_path / name for name in ("clean", "noisy", "again"))
    for path in clean.rglob("*"):
        if path.is_file() and path.name not in ("captions.jsonl", "meta.json"):
            assert path.read_bytes() == (noisy / path.relative_to(clean)).read_bytes(), path
    assert (noisy / "captions.jsonl").read_bytes() == (again / "captions.jsonl").read_bytes()
    clean_lines = (clean / "captions.jsonl").read_text().splitlines()
    noisy_lines = (noisy / "captions.jsonl").read_text().splitlines()
    assert len(clean_lines) == len(noisy_lines)
    assert np.mean([a != b for a, b in zip(clean_lines, noisy_lines)]) > 0.5
    assert json.loads((noisy / "meta.json").read_text())["caption_noise"] == 1.0
    assert "caption_noise" not in json.loads((clean / "meta.json").read_text())


def test_template_caption_backend_rebuilds_the_noisy_captions(tmp_path: Path) -> None:
    root = tmp_path / "set"
    generate(root, seed=3, caption_noise=0.7, **TINY)
    out = tmp_path / "captions.jsonl"
    argv = ["caption", "--dataset", "synthetic", "--root", str(root), "--backend", "template",
            "--caption-noise", "0.7", "--out", str(out), "--no-progress"]
    assert fba_main(argv) == 0
    assert sorted(out.read_text().splitlines()) == sorted((root / "captions.jsonl").read_text().splitlines())
    other = tmp_path / "other.jsonl"
    assert fba_main([*argv[:-3], "--caption-seed", "4", "--out", str(other), "--no-progress"]) == 0
    assert sorted(other.read_text().splitlines()) != sorted(out.read_text().splitlines())
    assert fba_main(["caption", "--dataset", "synthetic", "--root", str(root), "--caption-noise", "1"]) == 2
    assert fba_main(["synth", "--out", str(tmp_path / "bad"), "--caption-noise", "-1"]) == 2
