"""One FBA training step end to end: images/s, where the step's time goes, peak memory and MFU, variant by variant.

    python -m benchmarks.bench_train_step            # paper size: ViT-B/16, 384x128, stride 12, batch 64 (16 x 4)
    python -m benchmarks.bench_train_step --smoke    # tiny model, 64x32 images, batch 8, a few steps (CPU, make test)

Variants, side by side in one run (``--variants`` picks some):

- ``eager-reference``: eager, ``model.kernel=reference``, caption token ids through the frozen text tower;
- ``+fused-kernels``: ``model.kernel=triton`` (CUDA only);
- ``+cached-text``: ``TextFeatures`` precomputed (``model.text_cache``): no text tower in the step;
- ``+compile-backbone``: the backbone through ``torch.compile`` (fuses LayerNorm, QuickGELU, casts);
- ``+compile``: backbone and cross-modal module (the fused Triton kernel included) through ``torch.compile``;
- ``+deepspeed``: the ``+cached-text`` step through the DeepSpeed engine that ``fba train`` builds by default
  on one GPU (``train.engine_mode=autocast``, ZeRO 0: fp32 weights, DeepSpeed's ``torch_autocast``, torch's fused
  Adam stepping the weights itself);
- ``+deepspeed-zero2``: the same engine with ZeRO 2 (what several GPUs run), here on one;
- ``+deepspeed-lowp``: ``train.engine_mode=lowp_weights``: bf16 weights, DeepSpeed's fp32 master copy in ZeRO 2
  (the trainer's former engine).

The eager variants keep fp32 weights, run the forward under bf16 autocast and step a (fused on CUDA) Adam. The
DeepSpeed variants are what ``fba train`` runs: the trainer's own engine (:func:`fba.train.trainer.build_engine`
over ``plan_engine``: optimiser, LR schedule, engine mode, ZeRO stage) stepped by the trainer's own
:class:`fba.train.trainer.TrainStep` (inputs in the dtype the trainer hands its engine, forward, ``FBALoss``,
``engine.backward``, ``engine.step``). One more engine setting is one more ``Variant(..., engine_mode=...,
zero_stage=...)`` line. Inputs are synthetic but
shaped as the trainer's: a pinned host batch copied to the device each step, P x K identities, and the captions
of the batch gathered from a ``TextBank`` by index (the real JPEG/DALI input pipeline is ``bench_input``).

Time split: marks at section boundaries, CUDA events on a GPU (read once after the timed steps: no host sync in
the loop) and ``perf_counter`` on the CPU; forward hooks delimit the backbone, text tower and cross-modal module,
a gradient hook on the backbone's output tokens splits the backward into "everything after the backbone"
(losses, heads, cross-modal) and the backbone's own. MFU uses :mod:`fba.model.flops` (model FLOPs, stated in
docs/performance.md) against the data-sheet bf16 dense peak and against a bf16 matmul peak measured in the run.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch

from benchmarks.common import (
    Marks, benchmark_parser, build_bench_model, device_name, format_table, free_memory, matmul_peak_tflops,
    record_rows, resolve_kernel, synchronize, synthetic_captions, time_loop,
)
from fba.config import Config, ModelConfig, apply_overrides, validate
from fba.train.engine_config import plan_engine
from fba.train.trainer import TrainStep, build_engine, setup_distributed
from fba.embed.text_bank import TextBank
from fba.model.flops import spec_peak_tflops, training_flops
from fba.losses import FBALoss

BENCHMARK_KEY = "train_step"


@dataclass(frozen=True)
class Shape:
    """Model and batch of one run; ``warmup`` steps (compilation, autotuning) are not timed."""

    arch: str
    height: int
    width: int
    stride: int
    batch: int
    num_instances: int
    num_classes: int
    warmup: int
    steps: int


PAPER = Shape("ViT-B-16", 384, 128, 12, batch=64, num_instances=4, num_classes=751, warmup=3, steps=15)
SMOKE = Shape("tiny", 64, 32, 12, batch=8, num_instances=4, num_classes=16, warmup=1, steps=3)


@dataclass(frozen=True)
class Variant:
    name: str
    kernel: str = "reference"
    cached_text: bool = False
    compile: tuple[str, ...] = ()  # submodules of FBA put through torch.compile
    engine_mode: str | None = None  # train.engine_mode of a DeepSpeed engine; None: the eager step
    zero_stage: str = "auto"

    @property
    def deepspeed(self) -> bool:
        return self.engine_mode is not None


VARIANTS = {v.name: v for v in (
    Variant("eager-reference"),
    Variant("+fused-kernels", kernel="triton"),
    Variant("+cached-text", kernel="triton", cached_text=True),
    Variant("+compile-backbone", kernel="triton", cached_text=True, compile=("backbone",)),
    Variant("+compile", kernel="triton", cached_text=True, compile=("backbone", "cross_modal")),
    Variant("+deepspeed", kernel="triton", cached_text=True, engine_mode="autocast"),
    Variant("+deepspeed-zero2", kernel="triton", cached_text=True, engine_mode="autocast", zero_stage="2"),
    Variant("+deepspeed-lowp", kernel="triton", cached_text=True, engine_mode="lowp_weights"),
)}
SMOKE_VARIANTS = ("eager-reference", "+cached-text", "+deepspeed", "+deepspeed-zero2", "+deepspeed-lowp")
SECTIONS = ("data", "backbone_fwd", "text_fwd", "cross_modal_fwd", "heads_fwd", "loss_fwd", "after_backbone_bwd",
            "backbone_bwd", "optimizer", "other")


# ---- helpers shared with bench_embed ---------------------------------------------------------------------------


def count_host_syncs(fn: Callable[[], object], device: torch.device) -> int | None:
    """How many synchronising CUDA calls ``fn`` makes (torch's sync debug mode); None on the CPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


# ---- the training step -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def section_hooks(model: torch.nn.Module, marks: Marks):
    """Marks around the backbone, text tower and cross-modal module, and where the backbone's gradient arrives."""
    handles = []

    def around(module: torch.nn.Module | None, label: str) -> None:
        if module is not None:
            handles.append(module.register_forward_pre_hook(lambda *_: marks.mark("other")))
            handles.append(module.register_forward_hook(lambda *_: marks.mark(label)))

    def on_tokens(_module, _args, tokens: torch.Tensor) -> None:
        if tokens.requires_grad:
            tokens.register_hook(lambda _grad: marks.mark("after_backbone_bwd"))

    around(model.backbone, "backbone_fwd")
    around(model.text_encoder, "text_fwd")
    around(model.cross_modal, "cross_modal_fwd")
    handles.append(model.backbone.register_forward_hook(on_tokens))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pk_pids(shape: Shape) -> torch.Tensor:
    identities = torch.randperm(shape.num_classes, generator=torch.Generator().manual_seed(1))
    return identities[: shape.batch // shape.num_instances].repeat_interleave(shape.num_instances)


def _text_bank(model, captions: tuple[list[str], list[str]], cached: bool, device: torch.device) -> TextBank:
    """Token ids, or the frozen tower's features computed once (what ``model.text_cache`` gives a run)."""
    tokens = [model.text_encoder.tokenize(c).to(device) for c in captions]
    if cached:
        with torch.no_grad():
            features = [model.text_encoder(t) for t in tokens]
        return TextBank(*(f._replace(states=f.states.to(torch.float16)) for f in features))
    return TextBank(*tokens)


def trainer_config(model_cfg: ModelConfig, shape: Shape, variant: Variant) -> Config:
    """The config ``fba train`` would run this shape and engine with: the model, the P x K batch, bf16, eager
    (``train.compile=off``), the variant's engine mode and ZeRO stage."""
    cfg = Config(model=model_cfg)
    apply_overrides(cfg, [f"data.batch_size={shape.batch}", f"data.num_instances={shape.num_instances}",
                          "solver.base_lr=8e-5", "solver.weight_decay=1e-4", "train.precision=bf16",
                          "train.compile=off", f"train.engine_mode={variant.engine_mode}",
                          f"train.zero_stage={variant.zero_stage}"])
    return validate(cfg)


def trainer_step(model, model_cfg: ModelConfig, shape: Shape, variant: Variant, bank: TextBank,
                 device: torch.device) -> TrainStep:
    """The trainer's own engine and step for ``model`` on one rank (what ``Trainer`` builds), on an epoch long
    enough for the benchmark's steps."""
    cfg = trainer_config(model_cfg, shape, variant)
    env = setup_distributed()
    plan = plan_engine(cfg, "bf16", env.world_size)
    engine, scheduler = build_engine(cfg, model, plan)
    scheduler.begin_epoch(0, shape.warmup + shape.steps + 1)
    return TrainStep(engine, FBALoss(cfg.loss, cfg.model), bank, plan.weight_dtype, device)


def _eager_step(model, model_cfg: ModelConfig, bank: TextBank, dtype: torch.dtype, device: torch.device):
    """The eager variants' step: fp32 weights, bf16 autocast, torch Adam (fused on CUDA); the same sections
    as :class:`TrainStep` marks."""
    criterion = FBALoss(Config().loss, model_cfg)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=8e-5, weight_decay=1e-4, fused=device.type == "cuda")

    def step(batch: dict, mark) -> None:
        images = batch["images"].to(device, non_blocking=True).to(dtype)
        pids = batch["pids"].to(device, non_blocking=True)
        fg, bg = bank.select(batch["index"], dtype)
        mark("data")
        with torch.autocast(device.type, dtype=dtype):
            outputs = model(images, fg, bg)
        mark("heads_fwd")
        total, _parts = criterion({k: v.float() for k, v in outputs.items()}, pids)
        mark("loss_fwd")
        total.backward()
        mark("backbone_bwd")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark("optimizer")

    return step


def run_variant(variant: Variant, shape: Shape, device: torch.device, peaks: dict[str, float | None]) -> dict:
    """Build the model for ``variant``, run warm-up and timed steps; one result row."""
    kernel = resolve_kernel(variant.kernel, device)
    row: dict = {"variant": variant.name, "kernel": kernel, "cached_text": variant.cached_text,
                 "compile": "+".join(variant.compile), "deepspeed": variant.deepspeed,
                 "engine_mode": variant.engine_mode, "zero_stage": variant.zero_stage if variant.deepspeed else None,
                 "batch": shape.batch}
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    setup_start = time.perf_counter()
    model_cfg, model = build_bench_model(shape, kernel, device)
    captions = (synthetic_captions(4 * shape.batch, seed=1), synthetic_captions(4 * shape.batch, seed=2))
    bank = _text_bank(model, captions, variant.cached_text, device)
    if variant.deepspeed:
        step_fn = trainer_step(model, model_cfg, shape, variant, bank, device)
    else:
        step_fn = _eager_step(model, model_cfg, bank, torch.bfloat16, device)
    for name in variant.compile:  # $FBA_BENCH_COMPILE_BACKEND: gpu_suite --rehearse traces with "eager" on the CPU
        setattr(model, name, torch.compile(getattr(model, name), backend=os.environ.get("FBA_BENCH_COMPILE_BACKEND",
                                                                                         "inductor")))
    model.train()

    pin = device.type == "cuda"
    host_images = torch.randn(shape.batch, 3, shape.height, shape.width, pin_memory=pin)
    host_pids = _pk_pids(shape).pin_memory() if pin else _pk_pids(shape)
    gen = torch.Generator().manual_seed(2)
    indices = [torch.randperm(len(bank), generator=gen)[: shape.batch] for _ in range(shape.warmup + shape.steps + 1)]
    marks = Marks(device)

    def train_step(i: int) -> None:
        marks.mark("start")
        step_fn({"images": host_images, "pids": host_pids, "index": indices[i]}, marks.mark)

    with section_hooks(model, marks):
        for i in range(shape.warmup):
            train_step(i)
        synchronize(device)
        row["setup_s"] = time.perf_counter() - setup_start
        row["host_syncs"] = count_host_syncs(lambda: train_step(shape.warmup), device)
        marks.clear()
        for i in range(shape.steps):
            train_step(shape.warmup + 1 + i)
        steps = marks.steps()
    step_ms = statistics.median(sum(s.values()) for s in steps)
    flops = training_flops(model_cfg, (shape.height, shape.width), shape.num_classes, cached_text=variant.cached_text)
    achieved = flops.total * shape.batch / (step_ms / 1e3) / 1e12
    row.update({
        "step_ms": step_ms,
        "img_per_s": shape.batch / (step_ms / 1e3),
        "tflops": achieved,
        "mfu_spec": achieved / peaks["spec"] if peaks["spec"] else None,
        "mfu_measured": achieved / peaks["measured"],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "gflop_per_img": flops.total / 1e9,
    })
    row.update({f"{name}_ms": statistics.median(s.get(name, 0.0) for s in steps) for name in SECTIONS})
    row["status"] = "ok"
    if variant.compile:
        torch._dynamo.reset()
    return row


def h2d_copy_ms(shape: Shape, device: torch.device, repeat: int = 10) -> dict[str, float] | None:
    """Host-to-device time of one image batch from pinned and from pageable memory (why the loaders pin)."""
    if device.type != "cuda":
        return None
    result = {}
    for name, pinned in (("pinned", True), ("pageable", False)):
        host = torch.randn(shape.batch, 3, shape.height, shape.width, pin_memory=pinned)
        result[name] = 1e3 * time_loop(lambda: host.to(device, non_blocking=pinned), repeat, device=device)
    return result


def benchmark_config(shape: Shape, variants: list[str], device: torch.device) -> dict:
    """What the rows were measured with: shapes, variants, the two peaks, the H2D copy times, FLOPs per image."""
    spec = spec_peak_tflops(device_name(device.type)) if device.type == "cuda" else None
    return {"shape": asdict(shape), "variants": {n: asdict(VARIANTS[n]) for n in variants}, "precision": "bf16",
            "peak_tflops": {"spec_bf16_dense": spec, "measured_bf16_matmul": matmul_peak_tflops(device)},
            "h2d_copy_ms": h2d_copy_ms(shape, device),
            "flops_per_image": training_flops(ModelConfig(arch=shape.arch, stride=shape.stride),
                                              (shape.height, shape.width), shape.num_classes).as_dict()}


def run_benchmark(shape: Shape, variants: list[str], device: torch.device, config: dict) -> Iterator[dict]:
    """One row per variant, as each finishes (a failing variant gives a row with its error; the others still run)."""
    peaks = {"spec": config["peak_tflops"]["spec_bf16_dense"], "measured": config["peak_tflops"]["measured_bf16_matmul"]}
    for name in variants:
        if name == "+fused-kernels" and device.type != "cuda":
            yield {"variant": name, "status": "skipped: the fused kernels need CUDA tensors"}
            continue
        try:
            yield run_variant(VARIANTS[name], shape, device, peaks)
        except Exception as error:  # noqa: BLE001 - one broken variant must not hide the others' numbers
            traceback.print_exc()
            yield {"variant": name, "status": f"error: {type(error).__name__}: {str(error)[:300]}"}
        finally:
            free_memory(device)


SUMMARY = ("variant", "kernel", "step_ms", "img_per_s", "tflops", "mfu_spec", "mfu_measured", "peak_mem_gib",
           "host_syncs", "status")


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "tiny model, small images, a few steps (CPU-sized)", device_options=True)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all (smoke: a CPU subset)")
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant")
    parser.add_argument("--batch", type=int, help="images per step (a multiple of 4)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = SMOKE if args.smoke else PAPER
    overrides = {k: v for k, v in (("steps", args.steps), ("warmup", args.warmup), ("batch", args.batch)) if v}
    if overrides:
        shape = Shape(**{**asdict(shape), **overrides})
    if shape.batch % shape.num_instances:
        parser.error(f"--batch must be a multiple of {shape.num_instances} (P x K sampling)")
    variants = args.variants or list(SMOKE_VARIANTS if args.smoke else VARIANTS)
    config = benchmark_config(shape, variants, device)
    key = BENCHMARK_KEY + ("-smoke" if args.smoke else "")
    rows, path = record_rows(key, ([row] for row in run_benchmark(shape, variants, device, config)),
                             kind=device.type, config=config, directory=args.results_dir, append=args.append,
                             replaced=variants, show=lambda group: "\n".join(
                                 f"{row['variant']}: {row['status']}, {row.get('img_per_s', 0):.4g} img/s"
                                 for row in group))
    print(f"FBA training step on {device_name(device.type)}: {shape.arch} {shape.height}x{shape.width} stride "
          f"{shape.stride}, batch {shape.batch}, bf16; peak bf16 TFLOP/s spec {config['peak_tflops']['spec_bf16_dense']}"
          f", measured {config['peak_tflops']['measured_bf16_matmul']:.4g}")
    print(format_table(rows, SUMMARY))
    print("\nmedian ms per section (after_backbone_bwd = losses, heads and cross-modal backward):")
    print(format_table([r for r in rows if r.get("status") == "ok"], ("variant", *(f"{s}_ms" for s in SECTIONS))))
    print(f"\nwrote {path} [{key}]")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
