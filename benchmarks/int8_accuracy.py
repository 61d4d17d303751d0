"""What int8 costs a trained model: retrieval accuracy and speed of the fp32 and int8 exports on the CPU.

    python -m benchmarks.int8_accuracy --model runs/demo/train/model.pt        # the demo's trained model
    python -m benchmarks.int8_accuracy --model model.pt --calibration-images 300 --threads 2

The model's own data set (from its config): ``fba export`` writes the fp32 ONNX image export and the int8 one
(``--quantize int8``, calibrated on ``--calibration-images`` crops spread over the training split, by onnxruntime's
quantizer and, when installed, NNCF's: precision ``int8`` and ``int8-nncf``); then the query and gallery are
embedded by PyTorch (``fba embed``'s path), onnxruntime fp32 and int8 and, when installed, OpenVINO fp32 and int8, and each is scored the way ``fba eval`` scores (cosine, Market protocol).
Rows: mAP and Rank-1 (percent), their change against PyTorch, the cosine of each row to PyTorch's (min and
mean), and the embedding rate of the whole test set (img/s: one pass at batch 32 after the model is loaded and
compiled, decoding and resizing included, with this process's threads).
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import benchmark_parser, format_table, record_rows

BENCHMARK_KEY = "int8-accuracy"
COLUMNS = ("backend", "precision", "mAP", "R1", "d_mAP", "d_R1", "cos_min", "cos_mean", "img_per_s", "status")


def embed_splits(backend: str, model_path: Path, splits: dict[str, list[Path]], cfg) -> tuple[dict, float]:
    """Features of each split and the seconds the embedding took (the model loaded and compiled before)."""
    import dataclasses

    from fba.embed.backends import embed_exported, load_exported
    from fba.embed.command import embed_images
    from fba.embed.embedder import Embedder
    from fba.model.model_file import load_model

    if backend == "pytorch":
        model, _ = load_model(model_path, "cpu", torch.float32)
        embedder = Embedder(model, torch.device("cpu"), torch.float32)
        data = dataclasses.replace(cfg.data, eval_batch_size=32, num_workers=0, loader="torch")
        run_cfg = dataclasses.replace(cfg, data=data)
        start = time.perf_counter()
        features = {name: embed_images(embedder, paths, run_cfg, None, progress=False).numpy()
                    for name, paths in splits.items()}
        return features, time.perf_counter() - start
    with load_exported(model_path, backend) as exported:
        start = time.perf_counter()
        features = {name: np.asarray(embed_exported(exported, paths, None, 32, 0, progress=False))
                    for name, paths in splits.items()}
        return features, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "16 calibration images (for a small test data set)")
    parser.add_argument("--model", type=Path, required=True, help="a trained model.pt")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--threads", type=int, help="torch, onnxruntime and OpenVINO threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.calibration_images = 16
    if args.threads:
        torch.set_num_threads(args.threads)
    from fba.cli import main as fba
    from fba.data.datasets import build_dataset
    from fba.model.model_file import load_model
    from fba.retrieval.score import score_features

    _, cfg = load_model(args.model, "cpu", torch.float32)
    dataset = build_dataset(cfg.data.dataset, cfg.data.root)
    splits = {name: dataset.split(name) for name in ("query", "gallery")}
    ids = {name: (np.array([p for _, p, _ in items]), np.array([c for _, _, c in items])) for name, items in splits.items()}
    train_folder = Path(dataset.split("train")[0][0]).parent
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        out = Path(work)
        assert fba(["export", "--checkpoint", str(args.model), "--out", str(out)]) == 0
        assert fba(["export", "--checkpoint", str(args.model), "--out", str(out), "--quantize", "int8",
                    "--calibration", str(train_folder), "--calibration-images", str(args.calibration_images)]) == 0
        int8 = {"int8": out / "model-int8.onnx"}
        if importlib.util.find_spec("nncf"):
            assert fba(["export", "--checkpoint", str(args.model), "--out", str(out), "--quantize", "int8",
                        "--quantizer", "nncf", "--calibration", str(train_folder), "--calibration-images",
                        str(args.calibration_images)]) == 0
            int8["int8-nncf"] = out / "model-int8-nncf.onnx"
        runtimes = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
        cases = [("pytorch", args.model, "fp32")]
        for runtime in runtimes:
            cases += [(runtime, out / "model.onnx", "fp32"), *((runtime, path, name) for name, path in int8.items())]
        reference = None
        for backend, path, precision in cases:
            paths = {name: [Path(p) for p, _, _ in items] for name, items in splits.items()}
            features, seconds = embed_splits(backend, path, paths, cfg)
            rate = sum(len(items) for items in splits.values()) / seconds
            metrics = score_features(features["query"], features["gallery"], ids["query"][0], ids["gallery"][0],
                                     ids["query"][1], ids["gallery"][1]).percent()
            row = {"backend": backend, "precision": precision, "mAP": metrics["mAP"], "R1": metrics["R1"],
                   "img_per_s": rate, "status": "ok"}
            if reference is None:
                reference = (features, metrics)
            every = np.concatenate([features["query"], features["gallery"]])
            want = np.concatenate([reference[0]["query"], reference[0]["gallery"]])
            cosine = (every * want).sum(1)
            row.update(d_mAP=metrics["mAP"] - reference[1]["mAP"], d_R1=metrics["R1"] - reference[1]["R1"],
                       cos_min=float(cosine.min()), cos_mean=float(cosine.mean()))
            rows.append(row)
            print(format_table([row], COLUMNS), flush=True)
    config = {"model": str(args.model), "dataset": cfg.data.dataset, "arch": cfg.model.arch,
              "image_size": [cfg.data.height, cfg.data.width], "stride": cfg.model.stride,
              "query": len(splits["query"]), "gallery": len(splits["gallery"]),
              "calibration_images": args.calibration_images, "threads": torch.get_num_threads(),
              "batch": 32, "feature": "image"}
    key = BENCHMARK_KEY + ("-smoke" if args.smoke else "")
    _, path = record_rows(key, [rows], kind="cpu", config=config, directory=args.results_dir,
                          append=False, show=lambda group: "")
    print(format_table(rows, COLUMNS))
    print(f"\nwrote {path} [{key}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
