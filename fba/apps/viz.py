"""Pictures a person looks at: rank lists, attention overlays (the paper's Fig. 4) and loss curves, as PNG.

Images are composed with PIL (fast, no figure state); only the loss curves use matplotlib (Agg backend).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from fba.utils.jsonl import parse_object
from fba.retrieval.metrics import protocol_keep

CORRECT = (40, 180, 60)
WRONG = (220, 40, 40)
QUERY = (60, 60, 60)


def _tile(path: str, size: tuple[int, int], border: int, color: tuple[int, int, int]) -> Image.Image:
    height, width = size
    image = Image.open(path).convert("RGB").resize((width, height), Image.BICUBIC)
    framed = Image.new("RGB", (width + 2 * border, height + 2 * border), color)
    framed.paste(image, (border, border))
    return framed


def ranked_gallery(
    distances: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray, g_camids: np.ndarray, topk: int
) -> np.ndarray:
    """Gallery indices in rank order under the Market protocol (same id and camera, and junk id -1, removed)."""
    order = np.argsort(distances, kind="stable")
    keep = protocol_keep(g_pids[order], g_camids[order], q_pid, q_camid)
    return order[keep][:topk]


def save_rank_list(
    out: str | Path,
    distmat: np.ndarray,
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    query_indices: Sequence[int],
    topk: int = 10,
    size: tuple[int, int] = (128, 64),
    border: int = 4,
) -> Path:
    """One row per query: the query (grey frame) then its top-k gallery images, green if same id, red if not."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    cell_h, cell_w = size[0] + 2 * border, size[1] + 2 * border
    gap = 12
    sheet = Image.new("RGB", (cell_w * (topk + 1) + gap, cell_h * len(query_indices)), (255, 255, 255))
    for row, qi in enumerate(query_indices):
        sheet.paste(_tile(query_paths[qi], size, border, QUERY), (0, row * cell_h))
        ranked = ranked_gallery(distmat[qi], q_pids[qi], q_camids[qi], g_pids, g_camids, topk)
        for col, gi in enumerate(ranked):
            color = CORRECT if g_pids[gi] == q_pids[qi] else WRONG
            sheet.paste(_tile(gallery_paths[gi], size, border, color), (gap + cell_w * (col + 1), row * cell_h))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def heat_to_rgb(heat: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to a blue-green-yellow-red ramp (jet-like), uint8 RGB."""
    heat = np.clip(heat, 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4 * heat - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * heat - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * heat - 1), 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def overlay_heatmap(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a patch-grid heat map [gh, gw] (any range; min-max normalised here) over ``image``."""
    heat = np.asarray(heat, dtype=np.float64)
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colored = Image.fromarray(heat_to_rgb(heat)).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), colored, alpha)


def save_attention_overlay(
    out: str | Path,
    image_paths: Sequence[str],
    heatmaps: Sequence[np.ndarray],
    size: tuple[int, int] = (256, 128),
    alpha: float = 0.5,
) -> Path:
    """The paper's Fig. 4 layout: raw images in the first row, the same images with their heat maps below."""
    if len(image_paths) != len(heatmaps):
        raise ValueError(f"{len(image_paths)} images but {len(heatmaps)} heat maps")
    height, width = size
    pad = 4
    sheet = Image.new("RGB", ((width + pad) * len(image_paths), 2 * (height + pad)), (255, 255, 255))
    for col, (path, heat) in enumerate(zip(image_paths, heatmaps)):
        image = Image.open(path).convert("RGB").resize((width, height), Image.BICUBIC)
        sheet.paste(image, (col * (width + pad), 0))
        sheet.paste(overlay_heatmap(image, heat, alpha), (col * (width + pad), height + pad))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a JSON-lines metrics file; a malformed line is an error naming the file and line."""
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                records.append(parse_object(line, f"{path}:{number}"))
    return records


def save_loss_curves(out: str | Path, metrics_file: str | Path, smooth: int = 1) -> Path:
    """Every ``loss/*`` series against the step, and the evaluation metrics against the epochs trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses: dict[str, list[tuple[int, float]]] = defaultdict(list)
    evals: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in read_metrics(metrics_file):
        for key, value in record.items():
            if key.startswith("loss/"):
                losses[key[5:]].append((record["step"], value))
            elif key.startswith("eval/") and key[5:] in ("mAP", "R1", "mINP"):
                evals[key[5:]].append((record["epoch"] + 1, value))  # the log's epoch is 0-based
    if not losses:
        raise ValueError(f"{metrics_file}: no loss/* entries to plot")
    panels = 2 if evals else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for name, series in sorted(losses.items()):
        steps, values = np.array(series).T
        if smooth > 1 and len(values) >= smooth:
            values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
            steps = steps[smooth - 1:]
        axes[0, 0].plot(steps, values, label=name, linewidth=2 if name == "total" else 1)
    axes[0, 0].set(xlabel="step", ylabel="loss", title="training losses")
    axes[0, 0].legend(fontsize=7)
    if evals:
        for name, series in sorted(evals.items()):
            epochs, values = np.array(series).T
            axes[0, 1].plot(epochs, values, marker="o", label=name)
        axes[0, 1].set(xlabel="epochs trained", ylabel="%", title="evaluation")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
