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
from fba.data.transforms import CLIP_MEAN, CLIP_STD
from fba.deploy.export import export_aoti, export_metadata, export_onnx, export_program
from fba.embed.backends import AOTIModel, OnnxRuntimeModel, OpenVinoModel
from fba.embed.embedder import Embedder
from fba.model.flops import extract_flops

BENCHMARK_KEY = "embed-deploy"
BACKENDS = ("pytorch", "onnxruntime", "openvino", "aoti", "onnxruntime-int8", "openvino-int8")
CALIBRATION_IMAGES = 16  # the int8 rows' ranges: speed does not depend on what they were calibrated on
DEPLOY = EmbedShape("ViT-B-16", 384, 128, 12, batches=(1, 8, 32), latency_iters=3, throughput_iters=2, warmup=1)
DEPLOY_SMOKE = EmbedShape("tiny", 64, 32, 12, batches=(1, 32), latency_iters=5, throughput_iters=5, warmup=1,
                          num_classes=16)
COLUMNS = ("backend", "threads", "batch", "p50_ms", "p99_ms", "img_per_s", "vs_pytorch", "gflops", "of_peak",
           "setup_s", "status")


def prepare(
    backend: str, model: torch.nn.Module, device: torch.device, folder: Path, threads: int | None = None
) -> Callable[[torch.Tensor], object]:
    """A call ``f(uint8 images)`` -> features on the host for ``backend`` (``threads``: onnxruntime's intra-op
    threads; PyTorch's and AOTInductor's are ``torch.set_num_threads``)."""
    if backend == "pytorch":
        embedder = Embedder(model, device, torch.float32)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return lambda images: embedder.embed((images.float() / 255 - mean) / std)
    program = export_program(model, "image")
    metadata = export_metadata(model, "image", "uint8")
    if backend.endswith("-int8"):
        from fba.deploy.quantize import quantize_int8

        height, width = model.backbone.image_size
        calibration = torch.randint(0, 256, (CALIBRATION_IMAGES, 3, height, width), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(1))
        batches = iter([calibration[i:i + 8].numpy() for i in range(0, CALIBRATION_IMAGES, 8)])
        fp32 = export_onnx(program, "image", folder / "model.onnx", metadata)
        int8 = quantize_int8(fp32, folder / "model-int8.onnx", batches)
        if backend == "onnxruntime-int8":
            return OnnxRuntimeModel(int8, threads=threads)
        return OpenVinoModel(int8, "latency", threads)
    if backend == "onnxruntime":
        return OnnxRuntimeModel(export_onnx(program, "image", folder / "model.onnx", metadata), threads=threads)
    if backend == "openvino":
        return OpenVinoModel(export_onnx(program, "image", folder / "model.onnx", metadata), "latency", threads)
    return AOTIModel(export_aoti(program, folder / "model.pt2", metadata), device, trust_native_code=True)  # built here


def run_backends(shape: EmbedShape, backends: list[str], device: torch.device, threads: int | None = None) -> list[dict]:
    """Rows per (backend, batch); ``threads`` pins every backend to that many CPU threads (default: each its own
    default, all cores)."""
    if threads:
        torch.set_num_threads(threads)
    model_cfg, model = build_bench_model(shape, "reference", device)
    model.eval()
    flops = extract_flops(model_cfg, (shape.height, shape.width), with_captions=False).total
    peak = matmul_peak_tflops(device, torch.float32) if device.type == "cpu" else None  # fp32, these threads
    most = max(shape.batches)
    images = torch.randint(0, 256, (most, 3, shape.height, shape.width), dtype=torch.uint8)
    calls, setup, failed = {}, {}, {}
    with tempfile.TemporaryDirectory() as work:
        for backend in backends:
            start = time.perf_counter()
            try:
                folder = Path(work) / backend
                folder.mkdir()
                calls[backend] = prepare(backend, model, device, folder, threads)
            except Exception as error:  # noqa: BLE001 - one broken backend must not hide the others' numbers
                traceback.print_exc()
                failed[backend] = f"error: {type(error).__name__}: {str(error)[:300]}"
            setup[backend] = time.perf_counter() - start
        rows = []
        for batch in shape.batches:
            batch_images = images[:batch]
            times: dict[str, list[float]] = {b: [] for b in calls}
            for _ in range(shape.warmup):
                for call in calls.values():
                    call(batch_images)
            for _ in range(shape.throughput_iters if batch == most else shape.latency_iters):
                for backend, call in calls.items():
                    start = time.perf_counter()
                    call(batch_images)
                    times[backend].append(1e3 * (time.perf_counter() - start))
            for backend in backends:
                row = {"backend": backend, "input": "image", "batch": batch, "threads": threads or torch.get_num_threads(),
                       "setup_s": setup[backend]}
                if backend in failed:
                    rows.append(dict(row, status=failed[backend]))
                    continue
                p50 = statistics.median(times[backend])
                gflops = flops * batch / (p50 / 1e3) / 1e9
                rows.append(dict(row, p50_ms=p50, p99_ms=percentile(times[backend], 0.99), img_per_s=batch / (p50 / 1e3),
                                 gflops=gflops, of_peak=gflops / (1e3 * peak) if peak else None,
                                 peak_fp32_gflops=1e3 * peak if peak else None, iters=len(times[backend]),
                                 status="ok"))
    for row in rows:
        base = next((r for r in rows if r["backend"] == "pytorch" and r["batch"] == row["batch"]), None)
        if base and base.get("img_per_s") and row.get("img_per_s"):
            row["vs_pytorch"] = row["img_per_s"] / base["img_per_s"]
    return rows
