"""Drawing one synthetic image: the camera's scene, an articulated figure, maybe an occluder, then light, jitter,
noise and JPEG encoding. :func:`render` is all the generator calls; it reads the attributes of a :class:`Job`
and draws its per-image jitter from ``default_rng((seed, job.index))``.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .attributes import CASTS, COLOURS, HAIR_COLOURS, LIGHTS, OCCLUDERS, SKIN_TONES, choose, sample_person, sample_pose
from .splits import Job

SUPERSAMPLE = 2
JPEG_QUALITY = 90

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


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, kind: str, figure: tuple[float, ...],
                   h: int, w: int) -> dict[str, Any]:
    """Draw one occluder over the figure's box; returns its attributes (for the bg caption)."""
    x0, top, x1, foot = figure
    size = foot - top
    cx = (x0 + x1) / 2
    if kind == "railing":
        colour = choose(rng, ("grey", "black", "white", "green"))
        rail_top = foot - size * rng.uniform(0.4, 0.65)
        bar = max(2, round(h * 0.018))
        for y in np.linspace(rail_top, h, 4):
            draw.rectangle((0, y, w, y + bar), fill=_rgb(colour))
        step = max(4.0, w * rng.uniform(0.09, 0.14))
        for x in np.arange(rng.uniform(0, step), w, step):
            draw.rectangle((x, rail_top, x + step * 0.45, h), fill=_shade(COLOURS[colour], 0.85))
        return {"type": "railing", "colour": colour}
    if kind == "car":
        colour = choose(rng, tuple(COLOURS))
        roof = foot - size * rng.uniform(0.4, 0.65)
        body = roof + (h - roof) * 0.35
        draw.rounded_rectangle((-w * 0.2, roof, w * 1.2, h + 10), radius=h * 0.05, fill=_rgb(colour))
        draw.rectangle((w * 0.05, roof + (body - roof) * 0.15, w * 0.95, body), fill=(60, 75, 95, 255))
        for wx in (w * 0.12, w * 0.88):
            draw.ellipse((wx - w * 0.13, h - w * 0.13, wx + w * 0.13, h + w * 0.13), fill=(20, 20, 20, 255))
        return {"type": "car", "colour": colour}
    if kind == "pole":
        colour = choose(rng, ("grey", "yellow", "black", "red", "white"))
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
        kind = choose(rng, OCCLUDERS, p=list(np.array([mix[k] for k in OCCLUDERS]) / sum(mix.values())))
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


def render_task(args: tuple[Job, int, int, int]) -> tuple[str, bytes, dict[str, Any]]:
    """:func:`render` of one ``(job, seed, height, width)`` tuple, for ``ProcessPoolExecutor.map``."""
    return render(*args)
