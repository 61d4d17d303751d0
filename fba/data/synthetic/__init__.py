"""``fba synth``: a procedurally drawn person re-identification set in the Market-1501 layout, with captions.

The set is built so that a model has to look at the person, as FBA argues:

- identity lives in the foreground: each identity has fixed attributes (clothes and their colours, hair, hat,
  bag, shoes, build), drawn as an articulated figure with per-image pose, scale, position and colour jitter;
- cameras differ in background: each camera has its own scene (texture, colours, light, scenery objects), shared
  by every identity it sees. Under the Market protocol (same id and same camera dropped from the gallery) the
  same-camera gallery images are all *other* people, so a background matcher ranks wrong people first;
- with ``occluded``, railings, cars, poles and other people (drawn with other attributes) stand in front of the
  person in a camera-dependent mix, most often in the query split (as Occluded-Duke).

One module per job: :mod:`.attributes` (vocabulary, sampling, the ``attributes.jsonl`` format), :mod:`.splits`
(splits), :mod:`.drawing` (pixels), :mod:`.captions` (words), :mod:`.generator` (writing the set) and
:mod:`fba.commands.synth` (``fba synth``). The public names below are loaded on first use, so importing the caption part
(as ``fba caption --backend template`` does) never loads the drawing code.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SynthError": "attributes", "read_attributes": "attributes", "sample_person": "attributes",
    "sample_people": "attributes", "sample_camera": "attributes", "sample_cameras": "attributes",
    "sample_pose": "attributes", "COLOURS": "attributes", "OCCLUDERS": "attributes", "RECORD_KEYS": "attributes",
    "SPLIT_FOLDERS": "splits", "Job": "splits", "plan": "splits",
    "render": "drawing", "draw_person": "drawing", "camera_background": "drawing",
    "describe": "captions", "describe_person": "captions", "describe_scene": "captions",
    "generate": "generator", "SynthSummary": "generator", "VERSION": "generator",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
