"""How ``fba train`` sets up its DeepSpeed engine: the engine mode, the ZeRO stage and the DeepSpeed config.

Two engine modes (``train.engine_mode``; the measured reason is in docs/performance.md):

- ``autocast`` (``auto``): fp32 weights, the forward under ``torch.autocast`` to the run's precision
  (DeepSpeed's ``torch_autocast`` section), and torch's Adam stepping the fp32 weights directly: fused on CUDA,
  multi-tensor (``foreach``) on the CPU. It is the eager step, run by the engine. Gradients are all-reduced in
  fp32 (no module is marked for low-precision communication).
- ``lowp_weights``: DeepSpeed's ``bf16``/``fp16`` sections: the module holds low-precision weights and ZeRO's
  (or the BF16 optimiser's) fp32 master copy is stepped, then cast back. Less memory per rank for the weights,
  but on one H100 its optimiser step took 38 ms against 1.3 ms for fused Adam.

ZeRO stage (``train.zero_stage``): ``auto`` is 0 on one rank (nothing to partition; the engine's gradient
all-reduce, a flatten and copy of every gradient, is switched off) and 2 on several (gradients and optimiser
state partitioned); 1, 2 or 3 when set. ``auto`` in ``lowp_weights`` mode is 2: DeepSpeed keeps its fp32
master weights in the ZeRO optimiser. DeepSpeed's throughput timer, which synchronises the device twice per
step, is off.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fba.config import Config, ConfigError
from fba.distributed import micro_batch_size

__all__ = ["ENGINE_MODES", "EnginePlan", "build_optimizer", "deepspeed_config", "initialize_engine", "plan_engine"]

ENGINE_MODES = ("auto", "autocast", "lowp_weights")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class EnginePlan:
    """The resolved engine settings of one run."""

    mode: str  # autocast | lowp_weights
    precision: str  # bf16 | fp16 | fp32 (already resolved for the device)
    zero_stage: int
    world_size: int

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the matmuls run in (the Embedder's dtype at evaluation)."""
        return DTYPES[self.precision]

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the module's weights, and so of the inputs the trainer hands it."""
        return DTYPES[self.precision] if self.mode == "lowp_weights" else torch.float32


def resolve_zero_stage(value: str | int, world_size: int, mode: str) -> int:
    text = str(value).strip()
    if text == "auto":
        return 2 if mode == "lowp_weights" or world_size > 1 else 0
    if text not in ("0", "1", "2", "3"):
        raise ConfigError(f"train.zero_stage must be auto, 0, 1, 2 or 3, got {value!r}")
    return int(text)


def plan_engine(cfg: Config, precision: str, world_size: int) -> EnginePlan:
    """Engine mode and ZeRO stage of ``cfg`` at ``world_size``; ``precision`` is already resolved for the device."""
    mode = cfg.train.engine_mode
    if mode not in ENGINE_MODES:
        raise ConfigError(f"train.engine_mode must be one of {', '.join(ENGINE_MODES)}, got {mode!r}")
    mode = "autocast" if mode == "auto" else mode
    return EnginePlan(mode, precision, resolve_zero_stage(cfg.train.zero_stage, world_size, mode), world_size)


def deepspeed_config(cfg: Config, plan: EnginePlan) -> dict:
    """The DeepSpeed config of ``plan``: the global batch is ``data.batch_size`` at any world size."""
    accum = cfg.solver.grad_accum_steps
    micro = micro_batch_size(cfg.data.batch_size, cfg.data.num_instances, plan.world_size, accum)
    lowp = plan.mode == "lowp_weights"
    autocast = plan.mode == "autocast" and plan.precision != "fp32"
    config = {
        "train_batch_size": cfg.data.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.solver.grad_clip,
        "zero_optimization": {"stage": plan.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": lowp and plan.precision == "bf16"},
        "fp16": {"enabled": lowp and plan.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "torch_autocast": {
            "enabled": autocast,
            "dtype": "fp16" if plan.precision == "fp16" else "bf16",
            "lower_precision_safe_modules": [],  # gradients are all-reduced in fp32, as DDP's
        },
        "timers": {"throughput": {"enabled": False}},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if lowp:
        # Buffers in the parameters' dtype (BatchNorm's running statistics): a bf16 BatchNorm weight with fp32
        # running statistics is refused by batch_norm.
        config["data_types"] = {"buffer_dtype": plan.precision}
    return config


def build_optimizer(cfg: Config, params, device: torch.device) -> torch.optim.Adam:
    """docs/design.md#training-recipe's Adam: one fused kernel per step on CUDA, the multi-tensor path on the CPU."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.Adam(params, lr=cfg.solver.base_lr, weight_decay=cfg.solver.weight_decay, **fast)


def initialize_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, cfg: Config,
                      plan: EnginePlan):
    """``deepspeed.initialize`` with the config of ``plan``; returns the engine."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, plan))
    if plan.world_size == 1 and plan.zero_stage == 0:
        engine.enable_backward_allreduce = False  # an all-reduce over one rank only flattens and copies back
    return engine
