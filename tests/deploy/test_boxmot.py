"""boxmot, the tracker ReID users run, loads ``fba export --target boxmot`` with its own API and no code of ours,
and gets ``fba embed``'s features. Needs boxmot (``pip install boxmot``); without it the ImageNet-input twin in
test_export_targets.py checks the same contract by feeding what boxmot feeds."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fba.cli import main
from fba.retrieval.features_file import load_features

boxmot = pytest.importorskip("boxmot", reason="boxmot is not installed (pip install boxmot)")
cv2 = pytest.importorskip("cv2", reason="boxmot's OpenCV is not installed")

# Boxes (x1, y1, x2, y2) of a 240 x 160 frame: two the model's size (64 x 32, no resize), three boxmot resizes.
BOXES = np.array([[10, 20, 42, 84], [100, 90, 132, 154], [40, 100, 90, 220], [120, 10, 150, 70], [5, 150, 60, 235]])


def smooth_frame(seed: int = 0) -> np.ndarray:
    """A BGR frame of smooth content (upsampled noise), where resampling filters differ as on camera images."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.asarray(Image.fromarray(small).resize((160, 240), Image.BICUBIC))[..., ::-1])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(autouse=True)
def no_installs(monkeypatch):
    """boxmot 25 pins onnxruntime==1.24.3 and pip-installs it into the running environment when another version
    is there; the test environment is not boxmot's to change, and the installed onnxruntime runs the export."""
    from boxmot.utils.checks import RequirementsChecker

    monkeypatch.setattr(RequirementsChecker, "_install_packages", lambda self, missing, extra_args=None: None)


@pytest.fixture(scope="module")
def boxmot_model(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("boxmot-export")
    assert main(["export", "--checkpoint", str(checkpoint), "--target", "boxmot", "--out", str(out)]) == 0
    return out / "fba-reid-64x32.onnx"


def test_boxmot_reid_gives_fba_embed_features(checkpoint, boxmot_model, tmp_path):
    from boxmot.reid.core.registry import ReIDModelRegistry
    from boxmot.reid.core.runtime import ReID

    assert ReIDModelRegistry.get_model_name(boxmot_model) == "fba_reid"  # from the sidecar
    sidecar = boxmot_model.with_name(boxmot_model.name + ".metadata.json")
    moved = sidecar.rename(tmp_path / sidecar.name)
    assert ReIDModelRegistry.get_model_name(boxmot_model) is None  # the file name is no backbone of boxmot's
    moved.rename(sidecar)

    frame = smooth_frame()
    reid = ReID(weights=boxmot_model, device="cpu")
    assert tuple(reid.model.input_shape) == (64, 32)
    got = reid(frame, BOXES)
    crops = tmp_path / "crops"
    crops.mkdir()
    for i, (x1, y1, x2, y2) in enumerate(BOXES):  # what boxmot cut, as RGB files for fba embed (lossless)
        Image.fromarray(np.ascontiguousarray(frame[y1:y2, x1:x2, ::-1])).save(crops / f"{i}.png")
    assert main(["embed", "--model", str(checkpoint), "--images", str(crops), "--image-only", "--num-workers",
                 "0", "--out", str(tmp_path / "f.npz")]) == 0
    want = load_features(tmp_path / "f.npz").features
    cos = cosines(got, want)
    print("cosine to fba embed, no resize:", cos[:2], "resized by boxmot (cv2 bilinear vs PIL bicubic):", cos[2:])
    assert got.shape == want.shape and cos[:2].min() >= 0.99999
    assert cos[2:].min() >= 0.999


def test_botsort_tracks_with_the_fba_model(boxmot_model):
    from boxmot import BotSort

    tracker = BotSort(reid_weights=boxmot_model, device="cpu", half=False, use_cmc=False)
    frame = smooth_frame(1)
    ids = []
    for step in range(6):  # two people standing still: two tracks, kept
        dets = np.array([[10 + step, 20, 42 + step, 84, 0.9, 0], [100, 90, 132, 154, 0.9, 0]], dtype=np.float32)
        tracks = tracker.update(dets, frame)
        ids.append(sorted(int(t[4]) for t in tracks))
    assert ids[-1] == ids[-2] and len(ids[-1]) == 2
