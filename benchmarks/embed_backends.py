"""``bench_embed --deploy``: the exported model under onnxruntime, OpenVINO and AOTInductor beside PyTorch.

    python -m benchmarks.bench_embed --deploy            # ViT-B/16 384x128 stride 12, image-only, batches 1, 8, 32
    python -m benchmarks.bench_embed --deploy --smoke    # the tiny model, 64x32

fp32, image-only, on the device of the run (the CPU here). Each backend gets the same uint8 images: ``pytorch``
is ``fba embed``'s path (``Embedder.embed`` of the normalised images, fp32 weights), ``onnxruntime``,
``openvino`` (latency hint, fp32) and ``aoti`` run the graph of ``fba export`` (normalisation inside);
``onnxruntime-int8`` and ``openvino-int8`` run ``fba export --quantize int8``'s graph (calibrated here on random
crops: the speed does not depend on the ranges). The calls
are interleaved (one call of each backend in turn), so the machine's noise falls on all of them alike;
``vs_pytorch`` is the throughput ratio to the PyTorch row of the same batch; ``gflops`` is what the model's
FLOP count (:func:`fba.model.flops.extract_flops`) gives at that rate, and ``of_peak`` its fraction of an fp32 matmul
peak measured in the same run with the same threads (the machine's limit, not a data sheet's). ``setup_s`` is
the export (and compile) time.

``--inputs image captions captions-cached`` adds the full feature on ``pytorch``, ``onnxruntime`` and
``openvino``: ``captions`` with the captions' token ids (the text tower in every call), ``captions-cached`` with
each caption's tower output computed once (``fba export --caption-input states`` for the runtimes: the backend
caches the tower's outputs; the captions repeat across calls, as a tracker's per-track captions do).
``captions_cost`` is the time per image over the same backend's image-only time, less one: what the captions
cost. These rows go under their own key (``embed-deploy-captions``): every runtime of a run holds its graphs and
buffers until the run ends, and the full-feature graphs of ViT-B/16 beside all the image-only ones outgrow 24 GiB
at batch 32.
"""
from __future__ import annotations

import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import EmbedShape, build_bench_model, matmul_peak_tflops, percentile
from fba.data.transforms import ClipNormalise
from fba.deploy.export import (
    TEXT_TOWER_FILE, export_aoti, export_metadata, export_onnx, export_program, export_text_tower,
)
from fba.embed.backends import AOTIModel, OnnxRuntimeModel, OpenVinoModel
from fba.embed.embedder import Embedder
from fba.model.flops import extract_flops

BENCHMARK_KEY = "embed-deploy"
BACKENDS = ("pytorch", "onnxruntime", "openvino", "aoti", "onnxruntime-int8", "openvino-int8")
CALIBRATION_IMAGES = 16  # the int8 rows' ranges: speed does not depend on what they were calibrated on
DEPLOY = EmbedShape("ViT-B-16", 384, 128, 12, batches=(1, 8, 32), latency_iters=3, throughput_iters=2, warmup=1)
DEPLOY_SMOKE = EmbedShape("tiny", 64, 32, 12, batches=(1, 32), latency_iters=5, throughput_iters=5, warmup=1,
                          num_classes=16)
COLUMNS = ("backend", "input", "threads", "batch", "p50_ms", "p99_ms", "img_per_s", "vs_pytorch", "captions_cost",
           "gflops", "of_peak", "setup_s", "status")


CAPTION_INPUTS = {"captions": "tokens", "captions-cached": "states"}  # the input rows and the graph each runs
CAPTION_BACKENDS = ("pytorch", "onnxruntime", "openvino")  # the backends of the full-feature rows


def prepare(
    backend: str, model: torch.nn.Module, device: torch.device, folder: Path, threads: int | None = None,
    input: str = "image",
) -> Callable[..., object]:
    """A call ``f(uint8 images, fg, bg)`` -> features on the host for ``backend`` and ``input`` (``threads``:
    onnxruntime's and OpenVINO's threads; PyTorch's and AOTInductor's are ``torch.set_num_threads``). ``image``
    ignores the captions; ``captions`` runs the text tower in every call; ``captions-cached`` runs it once per
    caption (PyTorch: the tower's outputs computed once, as ``model.text_cache`` gives them; onnxruntime and
    OpenVINO: the states export, whose backend caches each caption's tower output)."""
    if backend == "pytorch":
        embedder = Embedder(model, device, torch.float32)
        normalise = ClipNormalise()
        if input == "image":
            return lambda images, fg, bg: embedder.embed(normalise(images))
        if input == "captions":
            return lambda images, fg, bg: embedder.embed(normalise(images), (fg, bg))
        encoded: dict[bytes, tuple] = {}  # the tower once per caption set, as a text cache gives it

        def cached(images, fg, bg):
            key = fg.numpy().tobytes() + bg.numpy().tobytes()
            if key not in encoded:
                with torch.no_grad():
                    encoded[key] = (model.text_encoder(fg), model.text_encoder(bg))
            return embedder.embed(normalise(images), encoded[key])
        return cached
    feature = "image" if input == "image" else "full"
    caption_input = CAPTION_INPUTS.get(input, "tokens")
    program = export_program(model, feature, caption_input=caption_input)
    metadata = export_metadata(model, feature, "uint8", caption_input=caption_input)
    if backend.endswith("-int8"):
        from fba.deploy.quantize import quantize_int8

        height, width = model.backbone.image_size
        calibration = torch.randint(0, 256, (CALIBRATION_IMAGES, 3, height, width), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(1))
        batches = iter([calibration[i:i + 8].numpy() for i in range(0, CALIBRATION_IMAGES, 8)])
        fp32 = export_onnx(program, folder / "model.onnx", metadata)
        int8 = quantize_int8(fp32, folder / "model-int8.onnx", batches)
        runner = OnnxRuntimeModel(int8, threads=threads) if backend == "onnxruntime-int8" else \
            OpenVinoModel(int8, "latency", threads)
        return lambda images, fg, bg: runner(images)
    if backend == "aoti":
        runner = AOTIModel(export_aoti(program, folder / "model.pt2", metadata), device, trust_native_code=True)
        return lambda images, fg, bg: runner(images)  # built here
    if caption_input == "states":
        export_text_tower(model, folder / TEXT_TOWER_FILE)
    path = export_onnx(program, folder / "model.onnx", metadata)
    runner = OnnxRuntimeModel(path, threads=threads) if backend == "onnxruntime" else \
        OpenVinoModel(path, "latency", threads)
    if input == "image":
        return lambda images, fg, bg: runner(images)
    return lambda images, fg, bg: runner(images, fg, bg)


def run_backends(shape: EmbedShape, backends: list[str], device: torch.device, threads: int | None = None,
                 inputs: tuple[str, ...] = ("image",)) -> list[dict]:
    """Rows per (backend, input, batch); ``threads`` pins every backend to that many CPU threads (default: each
    its own default, all cores). The caption inputs run on :data:`CAPTION_BACKENDS` only; ``captions_cost`` is
    a row's time per image over the same backend's image-only time at that batch, less one."""
    if threads:
        torch.set_num_threads(threads)
    model_cfg, model = build_bench_model(shape, "reference", device)
    model.eval()
    size = (shape.height, shape.width)
    flops = {"image": extract_flops(model_cfg, size, with_captions=False).total,
             "captions": extract_flops(model_cfg, size, with_captions=True).total,
             "captions-cached": extract_flops(model_cfg, size, with_captions=True, cached_text=True).total}
    peak = matmul_peak_tflops(device, torch.float32) if device.type == "cpu" else None  # fp32, these threads
    most = max(shape.batches)
    images = torch.randint(0, 256, (most, 3, shape.height, shape.width), dtype=torch.uint8)
    fg_all = model.text_encoder.tokenize([f"a person in a red shirt and grey trousers, number {i}" for i in range(most)])
    bg_all = model.text_encoder.tokenize([f"a street with a parked car and a tree, camera {i % 4}" for i in range(most)])
    cases = [(b, i) for i in inputs for b in backends if i == "image" or b in CAPTION_BACKENDS]
    calls, setup, failed = {}, {}, {}
    with tempfile.TemporaryDirectory() as work:
        for case in cases:
            start = time.perf_counter()
            try:
                folder = Path(work) / "-".join(case)
                folder.mkdir()
                calls[case] = prepare(*case[:1], model, device, folder, threads, input=case[1])
            except Exception as error:  # noqa: BLE001 - one broken backend must not hide the others' numbers
                traceback.print_exc()
                failed[case] = f"error: {type(error).__name__}: {str(error)[:300]}"
            setup[case] = time.perf_counter() - start
        rows = []
        for batch in shape.batches:
            args = (images[:batch], fg_all[:batch], bg_all[:batch])
            times: dict[tuple, list[float]] = {c: [] for c in calls}
            for _ in range(shape.warmup):
                for call in calls.values():
                    call(*args)
            for _ in range(shape.throughput_iters if batch == most else shape.latency_iters):
                for case, call in calls.items():
                    start = time.perf_counter()
                    call(*args)
                    times[case].append(1e3 * (time.perf_counter() - start))
            for case in cases:
                backend, input = case
                row = {"backend": backend, "input": input, "batch": batch,
                       "threads": threads or torch.get_num_threads(), "setup_s": setup[case]}
                if case in failed:
                    rows.append(dict(row, status=failed[case]))
                    continue
                p50 = statistics.median(times[case])
                gflops = flops[input] * batch / (p50 / 1e3) / 1e9
                rows.append(dict(row, p50_ms=p50, p99_ms=percentile(times[case], 0.99), img_per_s=batch / (p50 / 1e3),
                                 gflops=gflops, of_peak=gflops / (1e3 * peak) if peak else None,
                                 peak_fp32_gflops=1e3 * peak if peak else None, iters=len(times[case]),
                                 status="ok"))
    for row in rows:
        same = lambda backend, input: next(  # noqa: E731
            (r for r in rows if r["backend"] == backend and r["input"] == input and r["batch"] == row["batch"]
             and r.get("img_per_s")), None)
        base, image = same("pytorch", row["input"]), same(row["backend"], "image")
        if base and row.get("img_per_s"):
            row["vs_pytorch"] = row["img_per_s"] / base["img_per_s"]
        if image and row.get("img_per_s") and row["input"] != "image":
            row["captions_cost"] = image["img_per_s"] / row["img_per_s"] - 1
    return rows
