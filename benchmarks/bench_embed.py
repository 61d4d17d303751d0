"""Retrieval embedding through ``fba embed``'s engine (:class:`fba.embed.embedder.Embedder`): latency and throughput.

    python -m benchmarks.bench_embed            # paper size: ViT-B/16, 384x128, stride 12, bf16, batches 1/32/256
    python -m benchmarks.bench_embed --smoke    # tiny model, 64x32 images, batches 1/4/8 (CPU, make test)

Each case is one ``Embedder.embed`` call per batch, timed on the host as a caller sees it: the pinned host images
are copied in, the features come back to the host as float32 (so every call ends in a sync). Latency p50/p99 at
batch 1 and 32, throughput (images / median call) at every batch. Inputs:

- ``image``: the image-only feature (post-BN CLS);
- ``captions``: the full feature with both captions as CLIP token ids, the frozen text tower in the call;
- ``captions-cached``: the full feature with the tower's outputs precomputed (``model.text_cache``).

Variants: ``eager-autocast`` (fp32 weights under bf16 autocast: an fp32 model, `fba embed` before bf16 loading),
``eager-bf16`` (weights cast to bf16 once: no per-call weight casts), ``compiled`` (bf16 weights, ``model.extract``
through ``torch.compile(mode="reduce-overhead")``, i.e. CUDA graphs on a GPU; CUDA only by default, the
compilation time is a column), ``fast`` (:class:`fba.embed.fast.FastEmbedder`: uint8 pinned images
normalised on the device, one CUDA graph per batch bucket; eager on the CPU) and ``fast-compiled`` (the same with
``extract`` through ``torch.compile`` in the default mode before capture; CUDA only by default). FLOPs from
:func:`fba.model.flops.extract_flops`.

``--deploy`` measures the exported model instead: onnxruntime and AOTInductor beside the PyTorch backend, fp32,
image-only (``benchmarks.embed_backends``; key ``embed-deploy``).
"""
from __future__ import annotations

import statistics
import sys
import traceback
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from benchmarks import embed_backends
from benchmarks.common import (
    EmbedShape, benchmark_parser, build_bench_model, device_name, format_table, free_memory, matmul_peak_tflops,
    measure, percentile, record_rows, resolve_kernel, synthetic_captions, time_loop,
)
from fba.embed.embedder import Embedder
from fba.embed.fast import FastEmbedder
from fba.embed.text_bank import TextBank
from fba.model.flops import extract_flops, spec_peak_tflops

BENCHMARK_KEY = "embed"
INPUTS = ("image", "captions", "captions-cached")


PAPER = EmbedShape("ViT-B-16", 384, 128, 12, batches=(1, 32, 256), latency_iters=50, throughput_iters=8, warmup=3)
SMOKE = EmbedShape("tiny", 64, 32, 12, batches=(1, 4, 8), latency_iters=2, throughput_iters=2, warmup=1,
                   num_classes=16)


@dataclass(frozen=True)
class EmbedVariant:
    name: str
    bf16_weights: bool
    compile: bool = False
    inputs: tuple[str, ...] = INPUTS
    fast: bool = False  # FastEmbedder: uint8 images, CUDA graph per bucket


VARIANTS = {v.name: v for v in (
    EmbedVariant("eager-autocast", bf16_weights=False),
    EmbedVariant("eager-bf16", bf16_weights=True),
    EmbedVariant("compiled", bf16_weights=True, compile=True, inputs=("image", "captions-cached")),
    EmbedVariant("fast", bf16_weights=True, fast=True, inputs=("image", "captions-cached")),
    EmbedVariant("fast-compiled", bf16_weights=True, fast=True, compile=True, inputs=("image", "captions-cached")),
)}


def _text(bank: TextBank, kind: str, batch: int, dtype: torch.dtype):
    if kind == "image":
        return None
    return bank.select(torch.arange(batch), dtype)


def run_variant(variant: EmbedVariant, shape: EmbedShape, device: torch.device, peak: dict) -> list[dict]:
    """All (input, batch) cases of one variant on one model; a failing case gives a row with its error."""
    kernel = resolve_kernel("triton", device)
    model_cfg, model = build_bench_model(shape, kernel, device)
    model.eval()
    dtype = torch.bfloat16
    if variant.bf16_weights:
        model.to(dtype)
    if variant.fast:
        embedder = FastEmbedder(model, device, dtype, batches=shape.batches,
                                compile="default" if variant.compile else None)
    else:
        embedder = Embedder(model, device, dtype)
    most = max(shape.batches)
    captions = (synthetic_captions(most, seed=3), synthetic_captions(most, seed=4))
    tokens = TextBank(*(model.text_encoder.tokenize(c).to(device) for c in captions))
    with torch.no_grad():
        cached = TextBank(*(model.text_encoder(t) for t in (tokens.fg, tokens.bg)))
    pin = device.type == "cuda"
    if variant.fast:
        host_images = torch.randint(0, 256, (most, 3, shape.height, shape.width), dtype=torch.uint8)
        host_images = host_images.pin_memory() if pin else host_images
    else:
        host_images = torch.randn(most, 3, shape.height, shape.width, pin_memory=pin)
    rows = []
    for kind in variant.inputs:
        if variant.compile and not variant.fast:
            torch._dynamo.reset()
            model.extract = torch.compile(type(model).extract.__get__(model), mode="reduce-overhead")
        for batch in shape.batches:
            row = {"variant": variant.name, "input": kind, "batch": batch, "kernel": kernel,
                   "image_dtype": str(host_images.dtype).removeprefix("torch.")}
            try:
                bank = cached if kind == "captions-cached" else tokens
                text = _text(bank, kind, batch, embedder.param_dtype)
                images = host_images[:batch]
                call = lambda: embedder.embed(images, text)  # noqa: E731
                row["warmup_s"] = shape.warmup * time_loop(call, shape.warmup, warmup=0, device=device)
                iters = shape.throughput_iters if batch == most else shape.latency_iters
                timing, _ = measure(call, repeat=iters, warmup=0, device=device)
                times = [1e3 * seconds for seconds in timing.runs]
                p50 = statistics.median(times)
                flops = extract_flops(model_cfg, (shape.height, shape.width), with_captions=kind != "image",
                                      cached_text=kind == "captions-cached")
                achieved = flops.total * batch / (p50 / 1e3) / 1e12
                row.update({"p50_ms": p50, "p99_ms": percentile(times, 0.99), "img_per_s": batch / (p50 / 1e3),
                            "tflops": achieved, "mfu_spec": achieved / peak["spec"] if peak["spec"] else None,
                            "mfu_measured": achieved / peak["measured"], "iters": iters, "status": "ok"})
            except Exception as error:  # noqa: BLE001 - one broken case must not hide the others' numbers
                traceback.print_exc()
                row["status"] = f"error: {type(error).__name__}: {str(error)[:300]}"
            rows.append(row)
    if variant.compile:
        torch._dynamo.reset()
    return rows


def benchmark_config(shape: EmbedShape, variants: list[str], device: torch.device) -> dict:
    spec = spec_peak_tflops(device_name(device.type)) if device.type == "cuda" else None
    return {"shape": asdict(shape), "variants": {n: asdict(VARIANTS[n]) for n in variants}, "precision": "bf16",
            "peak_tflops": {"spec_bf16_dense": spec, "measured_bf16_matmul": matmul_peak_tflops(device)},
            "timing": "host wall clock per Embedder.embed call: pinned host images in, float32 features out"}


def run_benchmark(shape: EmbedShape, variants: list[str], device: torch.device, config: dict) -> Iterator[list[dict]]:
    """The rows of each variant, as each finishes."""
    peak = {"spec": config["peak_tflops"]["spec_bf16_dense"], "measured": config["peak_tflops"]["measured_bf16_matmul"]}
    for name in variants:
        try:
            yield run_variant(VARIANTS[name], shape, device, peak)
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            yield [{"variant": name, "status": f"error: {type(error).__name__}: {str(error)[:300]}"}]
        finally:
            free_memory(device)


COLUMNS = ("variant", "input", "batch", "p50_ms", "p99_ms", "img_per_s", "tflops", "mfu_spec", "warmup_s", "status")


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "tiny model, small images, few calls (CPU-sized)", device_options=True)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: all on CUDA; eager-autocast and eager-bf16 on the CPU")
    parser.add_argument("--deploy", action="store_true", help="the exported backends beside PyTorch (fp32, image-only)")
    parser.add_argument("--backends", nargs="+", choices=embed_backends.BACKENDS, help="with --deploy (default: all)")
    parser.add_argument("--threads", type=int, help="with --deploy: CPU threads of every backend (default: all cores)")
    parser.add_argument("--inputs", nargs="+", choices=INPUTS, default=["image"],
                        help="with --deploy: image (default); captions and captions-cached add the full feature")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.deploy:
        return main_deploy(args, device)
    shape = SMOKE if args.smoke else PAPER
    variants = args.variants or [n for n, v in VARIANTS.items() if device.type == "cuda" or not v.compile]
    config = benchmark_config(shape, variants, device)
    key = BENCHMARK_KEY + ("-smoke" if args.smoke else "")
    rows, path = record_rows(key, run_benchmark(shape, variants, device, config), kind=device.type, config=config,
                             directory=args.results_dir, append=args.append, replaced=variants,
                             show=lambda group: format_table(group, COLUMNS))
    print(f"FBA embedding (Embedder.embed) on {device_name(device.type)}: {shape.arch} {shape.height}x{shape.width} "
          f"stride {shape.stride}, bf16")
    print(format_table(rows, COLUMNS))
    print(f"\nwrote {path} [{key}]")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def main_deploy(args, device: torch.device) -> int:
    shape = embed_backends.DEPLOY_SMOKE if args.smoke else embed_backends.DEPLOY
    backends = args.backends or list(embed_backends.BACKENDS)
    captions = args.inputs != ["image"]  # the full-feature rows have their own key: a run of its own
    key = embed_backends.BENCHMARK_KEY + ("-captions" if captions else "") + ("-smoke" if args.smoke else "")
    config = {"shape": asdict(shape), "backends": backends, "precision": "fp32 (int8 where the backend says)",
              "inputs": args.inputs,
              "timing": "host wall clock per call, uint8 images in, float32 features out; backends interleaved"}
    rows, path = record_rows(key, [embed_backends.run_backends(shape, backends, device, args.threads,
                                                               tuple(args.inputs))],
                             kind=device.type, config=config, directory=args.results_dir, append=args.append,
                             show=lambda group: "")
    print(f"FBA embedding backends on {device_name(device.type)}: {shape.arch} {shape.height}x{shape.width} "
          f"stride {shape.stride}, fp32, {', '.join(args.inputs)}")
    print(format_table(rows, embed_backends.COLUMNS))
    print(f"\nwrote {path} [{key}]")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
