import json

import numpy as np
import pytest
from PIL import Image

from fba.apps import viz


@pytest.fixture()
def images(tmp_path):
    paths = []
    rng = np.random.default_rng(0)
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_rank_list_borders_follow_identity_and_protocol(tmp_path, images):
    query, gallery = images[:1], images[1:]
    q_pids, q_cams = np.array([7]), np.array([0])
    g_pids = np.array([7, 3, 7, -1, 5])
    g_cams = np.array([0, 1, 1, 1, 1])  # gallery 0: same id + same camera -> must be skipped
    distmat = np.array([[0.0, 0.1, 0.2, 0.05, 0.3]])
    out = viz.save_rank_list(tmp_path / "rank.png", distmat, query, gallery, q_pids, g_pids, q_cams, g_cams,
                             query_indices=[0], topk=3, size=(32, 16), border=2)
    sheet = np.asarray(Image.open(out))
    cell_w, gap = 16 + 4, 12
    # expected order after removing gallery 0 (same cam) and gallery 3 (junk): 1 (wrong), 2 (right), 4 (wrong)
    colors = [tuple(sheet[0, gap + cell_w * (col + 1)]) for col in range(3)]
    assert colors == [viz.WRONG, viz.CORRECT, viz.WRONG]
    assert tuple(sheet[0, 0]) == viz.QUERY


def test_overlay_layout_and_heat_location(tmp_path, images):
    heat = np.zeros((4, 2))
    heat[0, 0] = 1.0  # hot top-left patch
    out = viz.save_attention_overlay(tmp_path / "att.png", images[:2], [heat, heat], size=(64, 32), alpha=1.0)
    sheet = np.asarray(Image.open(out)).astype(int)
    assert sheet.shape == (2 * (64 + 4), 2 * (32 + 4), 3)
    top_left, bottom_right = sheet[64 + 4 + 2, 2], sheet[64 + 4 + 60, 28]
    assert top_left[0] > top_left[2] and bottom_right[2] > bottom_right[0]  # red where hot, blue where cold
    with pytest.raises(ValueError, match="2 images but 1 heat maps"):
        viz.save_attention_overlay(tmp_path / "bad.png", images[:2], [heat])


def test_loss_curves_from_metrics_file(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "epoch": s // 5, "loss/total": 5.0 - 0.1 * s, "loss/id": 3.0 - 0.05 * s} for s in range(20)]
    rows.append({"step": 19, "epoch": 3, "eval/mAP": 42.0, "eval/R1": 50.0})
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = viz.save_loss_curves(tmp_path / "loss.png", log)
    assert Image.open(out).size == (1200, 400)
    log.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        viz.save_loss_curves(tmp_path / "x.png", log)
