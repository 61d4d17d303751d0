"""Does the fba model help a tracker? boxmot's BoT-SORT, Deep OC-SORT and StrongSORT on synthetic sequences,
motion only and with the fba export as their ReID model, scored by ID switches and IDF1 (motmetrics).

    make setup-tracker     # .venv-tracker: boxmot and motmetrics (they need NumPy 2; fba serve NumPy 1)
    .venv-tracker/bin/python -m benchmarks.bench_tracking --model runs/demo/train/model.pt

What runs is what a boxmot user runs: ``fba export --target boxmot`` writes the file, boxmot's own ``BotSort``
loads it (``reid_weights=``) and is fed each frame as OpenCV reads it from disk (BGR) with the detections of the
sequence's ``det/det.txt``. The sequences are ``fba synth --sequence`` (:mod:`fba.data.synthetic.sequence`): new
identities crossing, pausing, turning and passing behind a kiosk, poles and a car, every person at least 35%
visible detected with jitter, so the tracker's errors are association errors.

The appearance threshold (BoT-SORT's ``appearance_thresh``, the largest cosine distance it accepts between a
track and a detection) is set from the model's own distance distributions, measured on a calibration sequence of
other people (its own seed): every crop at least 60% visible is embedded by boxmot's ReID backend, pairs of the
same person at least half a second apart and pairs of different people give two distributions, and the threshold
is the distance that minimises the sum of the two error rates (same-person pairs refused, other-person pairs
accepted). Rows: motion only; the fba model at boxmot's default threshold (0.25) and at the calibrated one; and a
control, the same architecture with random weights at its own calibrated threshold, which says how much of any
change is what the model learnt. The time per frame is the tracker's ``update`` (ReID included) on this machine.
Beside them: the cosine between boxmot's features of the export and ``fba embed``'s of the model file on the
calibration crops (boxmot resizes with OpenCV's bilinear filter, ``fba embed`` with PIL's bicubic).
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import benchmark_parser, format_table, record_rows

BENCHMARK_KEY = "tracking"
COLUMNS = ("tracker", "appearance", "appearance_thresh", "IDF1", "IDSW", "MOTA", "IDP", "IDR", "frag", "ms_per_frame")
CALIBRATION_COLUMNS = ("model", "same_p05", "same_p50", "same_p95", "other_p05", "other_p50", "other_p95",
                       "threshold", "refused_same", "accepted_other")
MIN_VISIBLE_CALIBRATION = 0.6
MIN_GAP_FRAMES = 15  # same-person pairs at least half a second apart, not a crop and its neighbour
BOXMOT_DEFAULT_THRESHOLD = 0.25
CALIBRATION_FRAMES = 150


def untrained_twin(model: Path, out: Path) -> Path:
    """The model file's architecture and config with fresh random weights (the control)."""
    import warnings

    from fba.config import config_from_dict
    from fba.model import build_model
    from fba.model.model_file import export_model
    from fba.utils.safe_load import safe_torch_load

    payload = safe_torch_load(model, "model file")
    cfg = config_from_dict(payload["config"])
    cfg.model.pretrained = None
    image_size = tuple(payload["image_size"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="model.pretrained is not set")
        twin = build_model(cfg.model, payload["num_classes"], image_size)
    return export_model(twin, out, cfg, payload["num_classes"], image_size)


def export_for_boxmot(model: Path, out: Path) -> Path:
    from fba.cli import main as fba

    assert fba(["export", "--checkpoint", str(model), "--target", "boxmot", "--out", str(out)]) == 0
    return next(out.glob("fba-reid-*.onnx"))


def frames_of(sequence: Path):
    """(frame number, BGR frame as OpenCV reads it, detections [x1, y1, x2, y2, score, class])."""
    import cv2

    from fba.data.synthetic.sequence import read_mot

    detections = read_mot(sequence / "det" / "det.txt")
    for path in sorted((sequence / "img1").glob("*.jpg")):
        frame = int(path.stem)
        rows = detections.get(frame, np.zeros((0, 7), np.float32))
        dets = np.concatenate([rows[:, 1:6], np.zeros((len(rows), 1), np.float32)], axis=1)
        yield frame, cv2.imread(str(path)), dets


def distance_distributions(weights: Path, sequence: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances of same-person and other-person crop pairs, the crops embedded by boxmot's ReID."""
    import cv2
    from boxmot.reid.core.runtime import ReID

    from fba.data.synthetic.sequence import read_mot

    reid = ReID(weights=weights, device="cpu")
    truth = read_mot(sequence / "gt" / "gt.txt")
    features, pids, frames = [], [], []
    for frame, rows in sorted(truth.items()):
        keep = [i for i, row in enumerate(rows) if row[6] >= MIN_VISIBLE_CALIBRATION]
        if not keep:
            continue
        image = cv2.imread(str(sequence / "img1" / f"{frame:06d}.jpg"))
        boxes = rows[keep, 1:5].round().astype(int)
        features.append(np.asarray(reid(image, boxes), np.float32))
        pids += [int(rows[i, 0]) for i in keep]
        frames += [frame] * len(keep)
    feats = np.concatenate(features)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    pids, frames = np.array(pids), np.array(frames)
    distance = 1.0 - feats @ feats.T
    upper = np.triu(np.ones_like(distance, bool), 1)
    same = (pids[:, None] == pids[None]) & (np.abs(frames[:, None] - frames[None]) >= MIN_GAP_FRAMES) & upper
    other = (pids[:, None] != pids[None]) & upper
    if not same.any() or not other.any():
        raise ValueError(f"{sequence}: no same-person or no other-person pairs to calibrate on (more frames)")
    return distance[same], distance[other]


def feature_agreement(model: Path, weights: Path, sequence: Path, work: Path, crops: int = 800) -> dict:
    """Cosine between boxmot's features of the export and ``fba embed``'s of the model file, on about ``crops``
    boxes: as cut (boxmot resizes with OpenCV's bilinear filter, ``fba embed`` with PIL's bicubic), and as boxmot
    resized them (no resize left to ``fba embed``), which says how much of the gap is the resize filter."""
    import cv2
    from boxmot.reid.core.runtime import ReID
    from PIL import Image

    from fba.data.synthetic.sequence import read_mot

    reid = ReID(weights=weights, device="cpu")
    height, width = reid.model.input_shape
    folders = {"as_cut": work / "agreement-cut", "resized_by_boxmot": work / "agreement-resized"}
    for folder in folders.values():
        folder.mkdir()
    got: list[np.ndarray] = []
    for frame, rows in sorted(read_mot(sequence / "gt" / "gt.txt").items()):
        if sum(map(len, got)) >= crops:
            break
        image = cv2.imread(str(sequence / "img1" / f"{frame:06d}.jpg"))
        boxes = rows[:, 1:5].round().astype(int)
        got.append(np.asarray(reid(image, boxes), np.float32))
        for i, (x1, y1, x2, y2) in enumerate(boxes):  # lossless RGB files of what boxmot cut and fed
            crop = np.ascontiguousarray(image[y1:y2, x1:x2])
            resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
            Image.fromarray(crop[..., ::-1]).save(folders["as_cut"] / f"{frame:06d}-{i:02d}.png")
            Image.fromarray(resized[..., ::-1]).save(folders["resized_by_boxmot"] / f"{frame:06d}-{i:02d}.png")
    features = np.concatenate(got)
    row: dict = {"crops": int(len(features))}
    for name, folder in folders.items():
        cosine = cosines(features, embed_folder(model, folder, work / f"{name}.npz"))
        row.update({f"{name}_cos_min": float(cosine.min()), f"{name}_cos_mean": float(cosine.mean())})
    return row


def embed_folder(model: Path, folder: Path, out: Path) -> np.ndarray:
    """``fba embed``'s image features of a folder, in file-name order."""
    from fba.cli import main as fba
    from fba.retrieval.features_file import load_features

    assert fba(["embed", "--model", str(model), "--images", str(folder), "--image-only", "--num-workers", "0",
                "--out", str(out)]) == 0
    return load_features(out).features


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def calibrated_threshold(same: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """The distance minimising (same-person pairs refused + other-person pairs accepted), with both rates."""
    candidates = np.unique(np.concatenate([same, other]).round(4))
    refused = 1.0 - np.searchsorted(np.sort(same), candidates, side="right") / len(same)
    accepted = np.searchsorted(np.sort(other), candidates, side="right") / len(other)
    best = int(np.argmin(refused + accepted))
    return float(candidates[best]), float(refused[best]), float(accepted[best])


def iou_distance(truth: np.ndarray, hyp: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """1 - IoU between ground-truth and tracker boxes (x1, y1, x2, y2), NaN (no match) below ``min_iou``: the
    MOTChallenge matching criterion."""
    if len(truth) == 0 or len(hyp) == 0:
        return np.empty((len(truth), len(hyp)))
    lo = np.maximum(truth[:, None, :2], hyp[None, :, :2])
    hi = np.minimum(truth[:, None, 2:], hyp[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = inter / (area(truth)[:, None] + area(hyp)[None] - inter)
    return np.where(iou >= min_iou, 1.0 - iou, np.nan)


def track(sequence: Path, make_tracker):
    """Run a fresh tracker over the sequence; its motmetrics accumulator and the mean ms per ``update``."""
    import motmetrics as mm

    from fba.data.synthetic.sequence import read_mot

    truth = read_mot(sequence / "gt" / "gt.txt")
    tracker = make_tracker()
    accumulator = mm.MOTAccumulator(auto_id=True)
    seconds = 0.0
    count = 0
    for frame, image, dets in frames_of(sequence):
        start = time.perf_counter()
        tracks = tracker.update(dets, image)
        seconds += time.perf_counter() - start
        count += 1
        gt = truth.get(frame, np.zeros((0, 7), np.float32))
        hyp = np.asarray(tracks, np.float32).reshape(-1, tracks.shape[1] if len(tracks) else 8)
        accumulator.update(gt[:, 0].astype(int).tolist(), hyp[:, 4].astype(int).tolist(),
                           iou_distance(gt[:, 1:5], hyp[:, :4]))
    return accumulator, 1000.0 * seconds / max(count, 1)


def tracker_variants(models: dict[str, Path], thresholds: dict[str, float]) -> dict[tuple, object]:
    """(tracker, appearance, threshold) -> a factory of a fresh tracker. BoT-SORT and Deep OC-SORT run with
    motion alone and with each model; StrongSORT, whose first association is by appearance, with each model.
    Camera-motion compensation is off: the synthetic camera does not move."""
    from boxmot import BotSort, DeepOcSort, StrongSort

    common = {"device": "cpu", "half": False}
    variants: dict[tuple, object] = {
        ("BoT-SORT", "motion only", None): lambda: BotSort(use_embeddings=False, use_cmc=False, **common),
        ("BoT-SORT", "fba", BOXMOT_DEFAULT_THRESHOLD): lambda: BotSort(
            reid_weights=models["fba"], appearance_thresh=BOXMOT_DEFAULT_THRESHOLD, use_cmc=False, **common),
        ("Deep OC-SORT", "motion only", None): lambda: DeepOcSort(use_embeddings=False, cmc_off=True, **common),
    }
    for name, weights in models.items():
        threshold = thresholds[name]
        variants[("BoT-SORT", name, threshold)] = lambda w=weights, t=threshold: BotSort(
            reid_weights=w, appearance_thresh=t, use_cmc=False, **common)
        variants[("Deep OC-SORT", name, None)] = lambda w=weights: DeepOcSort(reid_weights=w, cmc_off=True, **common)
        variants[("StrongSORT", name, threshold)] = lambda w=weights, t=threshold: StrongSort(
            reid_weights=w, max_cos_dist=t, **common)
    return dict(sorted(variants.items(), key=lambda kv: (kv[0][0], kv[0][1] != "motion only")))


def calibrate(models: dict[str, Path], sequence: Path) -> tuple[dict[str, float], list[dict]]:
    """Each model's threshold from its distance distributions on ``sequence``, and a row describing them."""
    thresholds, rows = {}, []
    for name, weights in models.items():
        same, other = distance_distributions(weights, sequence)
        threshold, refused, accepted = calibrated_threshold(same, other)
        thresholds[name] = threshold
        rows.append({"model": name, **{f"same_p{p:02d}": float(np.percentile(same, p)) for p in (5, 50, 95)},
                     **{f"other_p{p:02d}": float(np.percentile(other, p)) for p in (5, 50, 95)},
                     "threshold": threshold, "refused_same": refused, "accepted_other": accepted,
                     "same_pairs": int(len(same)), "other_pairs": int(len(other))})
    return thresholds, rows


def score(variants: dict[tuple, object], sequences: list[Path]):
    """One row per variant (as it is measured): MOT metrics over all sequences, ID switches per sequence."""
    import motmetrics as mm

    metrics = mm.metrics.create()
    names = ["idf1", "num_switches", "mota", "idp", "idr", "num_fragmentations"]
    for (tracker, appearance, threshold), make in variants.items():
        runs = [track(sequence, make) for sequence in sequences]
        summary = metrics.compute_many([acc for acc, _ in runs], metrics=names, names=[s.name for s in sequences],
                                       generate_overall=True)
        overall = summary.loc["OVERALL"]
        yield [{"tracker": tracker, "appearance": appearance, "appearance_thresh": threshold,
                "IDF1": 100 * float(overall["idf1"]), "IDSW": int(overall["num_switches"]),
                "MOTA": 100 * float(overall["mota"]), "IDP": 100 * float(overall["idp"]),
                "IDR": 100 * float(overall["idr"]), "frag": int(overall["num_fragmentations"]),
                "ms_per_frame": float(np.mean([ms for _, ms in runs])),
                "per_sequence_idsw": [int(summary.loc[s.name]["num_switches"]) for s in sequences]}]


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "one 40-frame sequence of 4 people (checks the pipeline, not the tracker)")
    parser.add_argument("--model", type=Path, required=True, help="a trained model.pt")
    parser.add_argument("--sequences", type=int, default=3, help="evaluation sequences (seeds --seed, --seed+1, ...)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sequences, args.frames, args.people = 1, 40, 4
    import boxmot
    import boxmot.utils  # its import sets the logger's level

    from fba.data.synthetic.sequence import write_sequence

    logging.getLogger("boxmot").setLevel(logging.WARNING)  # not a line for every tracker and model it builds
    calibration_seed = args.seed + 10_000
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        models = {"fba": export_for_boxmot(args.model, work / "trained"),
                  "untrained": export_for_boxmot(untrained_twin(args.model, work / "untrained.pt"), work / "control")}
        write_sequence(work / "calibration", max(args.frames, CALIBRATION_FRAMES), args.people, calibration_seed,
                       progress=False)
        thresholds, calibration_rows = calibrate(models, work / "calibration")
        print(format_table(calibration_rows, CALIBRATION_COLUMNS), flush=True)
        agreement = feature_agreement(args.model, models["fba"], work / "calibration", work)
        print(format_table([agreement]), flush=True)
        sequences = [work / f"seq{i}" for i in range(args.sequences)]
        for i, sequence in enumerate(sequences):
            write_sequence(sequence, args.frames, args.people, seed=args.seed + i, progress=False)
        config = {"model": str(args.model), "boxmot": boxmot.__version__, "camera_motion_compensation": False,
                  "sequences": args.sequences, "frames": args.frames, "people": args.people, "seed": args.seed,
                  "calibration_seed": calibration_seed, "frame_size": [360, 640], "min_visible": 0.35,
                  "calibration": calibration_rows, "feature_agreement": agreement,
                  "threads": torch.get_num_threads()}
        key = BENCHMARK_KEY + ("-smoke" if args.smoke else "")
        rows, path = record_rows(key, score(tracker_variants(models, thresholds), sequences), kind="cpu",
                                 config=config, directory=args.results_dir, append=False,
                                 show=lambda group: format_table(group, COLUMNS))
    print(format_table(calibration_rows, CALIBRATION_COLUMNS))
    print(format_table([agreement]))
    print(format_table(rows, COLUMNS))
    print(f"\nwrote {path} [{key}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
