"""GPU smoke of the trainer, not collected by pytest: `python tests/engine/_gpu_trainer_smoke.py [bf16 fp16 zero3 embed vitb step]`.

bf16 (auto) / fp16 / ZeRO-3 + text cache runs on the tiny set, `fba embed` and `fba eval --checkpoint` on the ZeRO-3
model, and the ViT-B-16 FBA at 384x128 (batch 64) for throughput, end to end and of the step alone; the JSON report goes to $OUT/gpu_smoke.json.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
warnings.simplefilter("ignore")
import torch
from _tiny_run import make_tiny_dataset, tiny_config
from fba.engine.trainer import train
from fba.cli import main

out = Path(os.environ.get("OUT", "/tmp/out"))
base = Path("/tmp/smoke")
root = make_tiny_dataset(base / "data")
report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
which = sys.argv[1:] or ["bf16", "fp16", "zero3", "embed", "vitb", "step"]
def last(path):
    recs = [json.loads(l) for l in open(path)]
    return recs[-2] if "eval/mAP" in recs[-1] else recs[-1], recs[-1]
if "bf16" in which:
    r = train(tiny_config(root, base / "bf16", "train.precision=auto", "data.loader=auto", "data.num_workers=2"))
    report["bf16"] = last(r.metrics_path)
if "fp16" in which:
    r = train(tiny_config(root, base / "fp16", "train.precision=fp16"))
    report["fp16"] = last(r.metrics_path)
if "zero3" in which:
    r = train(tiny_config(root, base / "zero3", "train.zero_stage=3", "model.text_cache=/tmp/smoke/cache"))
    report["zero3"] = last(r.metrics_path)
    if "embed" in which:
        main(["embed", "--model", str(r.model_path), "--images", str(root), "--captions", str(root / "captions.jsonl"), "--out", "/tmp/smoke/f.safetensors"])
        main(["eval", "-c", str(r.output_dir / "config.yaml"), "--checkpoint", str(r.model_path)])
if "vitb" in which:
    big = make_tiny_dataset(base / "big", train_ids=64, per_cam=4, test_ids=8, height=384, width=128)
    t = time.time()
    r = train(tiny_config(big, base / "vitb", "model.arch=ViT-B-16", "model.stride=12", "model.cross_layers=4",
                          "data.height=384", "data.width=128", "data.batch_size=64", "data.num_workers=12",
                          "train.precision=auto", "solver.epochs=3", "train.log_every=4"))
    recs = [json.loads(l) for l in open(r.metrics_path)]
    report["vitb"] = {"wall_s": time.time() - t, "records": [{k: v for k, v in x.items() if k in ("step", "images_per_s", "loss/total", "eval/mAP")} for x in recs]}
if "step" in which:  # the step alone on one resident batch: what the input pipeline has to keep up with
    from fba.engine.trainer import Trainer

    big = make_tiny_dataset(base / "big2", train_ids=32, per_cam=2, test_ids=4, height=384, width=128)
    for cache in (None, str(base / "cache_big")):
        extra = [f"model.text_cache={cache}"] if cache else []
        trainer = Trainer(tiny_config(big, base / "step", "model.arch=ViT-B-16", "model.stride=12",
                                      "model.cross_layers=4", "data.height=384", "data.width=128",
                                      "data.batch_size=64", "train.precision=auto", *extra))
        trainer.scheduler.begin_epoch(0, 1000)
        batch = next(iter(trainer.loader))
        images, pids, fg, bg = trainer._batch_inputs(batch)
        for i in range(25):
            if i == 5:
                torch.cuda.synchronize()
                t = time.time()
            total, _ = trainer.criterion({k: v.float() for k, v in trainer.engine(images, fg, bg).items()}, pids)
            trainer.engine.backward(total)
            trainer.engine.step()
        torch.cuda.synchronize()
        report[f"step_images_per_s{'_text_cache' if cache else ''}"] = 20 * 64 / (time.time() - t)
        report["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
print(json.dumps(report, indent=1))
(out / "gpu_smoke.json").write_text(json.dumps(report, indent=1))
