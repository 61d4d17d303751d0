"""``model.pt``: the trained model as one file that ``fba eval``, ``fba embed`` and ``fba export`` load without
DeepSpeed: the bare module's fp32 weights, its config, the number of classes and the image size, read with
:func:`fba.utils.safe_load.safe_torch_load` (no code is unpickled)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fba.utils.atomic import atomic_path
from fba.config import Config, ConfigError, config_from_dict
from fba.distributed import world
from fba.errors import InputError
from fba.model.fba import build_model
from fba.utils.safe_load import safe_torch_load

MODEL_FORMAT = "fba-model/1"


class ModelFileError(InputError):
    """A model.pt that is not a complete FBA export, or whose weights do not fit its own config."""


def module_state_dict(module: nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """The full fp32 state dict on CPU; under ZeRO-3 the partitioned parameters are gathered first."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = module.state_dict()
            return {k: _to_cpu_fp32(v) for k, v in state.items()}
    return {k: _to_cpu_fp32(v) for k, v in module.state_dict().items()}


def _to_cpu_fp32(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    return tensor.float() if tensor.is_floating_point() else tensor.clone()


def export_model(
    module: nn.Module, path: str | Path, cfg: Config, num_classes: int, image_size: tuple[int, int], zero_stage: int = 0
) -> Path:
    """Write ``model.pt``: the bare module's weights (no DeepSpeed wrapper), config, classes and image size.

    All ranks must call it under ZeRO-3 (the gather is collective); rank 0 writes, atomically.
    """
    state = module_state_dict(module, zero_stage)
    path = Path(path)
    if world()[0] == 0:
        payload = {
            "format": MODEL_FORMAT,
            "state_dict": state,
            "config": cfg.to_dict(),
            "num_classes": int(num_classes),
            "image_size": [int(image_size[0]), int(image_size[1])],
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    return path


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, Config]:
    """Rebuild the model of a ``model.pt`` (weights included; no CLIP file needed) in eval mode on ``device``.

    ``dtype`` casts the weights for inference: bf16 weights embed 1.4x faster on an H100 than fp32 weights under
    autocast, which re-casts every weight on every call (docs/performance.md).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    payload = safe_torch_load(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not an FBA model export ({MODEL_FORMAT}); write one with `fba train`")
    missing_keys = [key for key in ("state_dict", "config", "num_classes", "image_size") if key not in payload]
    if missing_keys:
        raise ModelFileError(f"{path}: the model file has no {', '.join(missing_keys)}; export it again with `fba train`")
    try:
        cfg = config_from_dict(payload["config"])
    except ConfigError as err:
        raise ModelFileError(f"{path}: the config stored in the model file is invalid ({err})") from None
    cfg.model.pretrained = None  # the weights below replace the CLIP initialisation
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="model.pretrained is not set")
        model = build_model(cfg.model, payload["num_classes"], tuple(payload["image_size"]))
    try:
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    except RuntimeError as err:  # a shape mismatch, e.g. a classifier for another number of identities
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err).splitlines()[0])
        raise ModelFileError(f"{path}: weights do not fit the model of its config ({detail})") from None
    if missing or unexpected:
        raise ModelFileError(
            f"{path}: weights do not fit the model of its config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device=device, dtype=dtype).eval(), cfg
