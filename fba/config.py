"""Configs as data: nested dataclasses, YAML files in ``configs/`` and dotted command-line overrides.

A YAML file and the overrides may only name fields that exist; a wrong key is an error that lists the valid
ones, so a typo never silently trains the wrong model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
import typing
from typing import Any

import yaml

from fba.errors import InputError


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str = "data/synthetic"
    captions: str | None = None  # JSON Lines file; None means <root>/captions.jsonl
    allow_missing_captions: bool = False
    options: dict = field(default_factory=dict)  # reader options, e.g. {"subset": "labeled"} for cuhk03np
    height: int = 384
    width: int = 128
    batch_size: int = 64  # P x K with K = num_instances
    num_instances: int = 4
    eval_batch_size: int = 128
    num_workers: int = 2
    loader: str = "auto"  # auto (dali on GPU, torch on CPU) | torch | dali
    flip_prob: float = 0.5
    padding: int = 10
    erasing_prob: float = 0.5
    test_only: bool = False  # evaluation-only data set (Occluded-ReID): `fba train` refuses it


@dataclass
class ModelConfig:
    arch: str = "ViT-B-16"  # ViT-B-16 | tiny
    pretrained: str | None = None  # local open_clip/OpenAI checkpoint; never downloaded
    stride: int = 12
    cross_modal: bool = True
    diversity: bool = True
    pooling: bool = True
    pool_grad: bool = False
    cross_layers: int = 4
    text_cache: str | None = None  # directory of the frozen text tower's cached outputs
    kernel: str = "auto"  # auto | reference | triton | cuda
    sync_bn: bool = False  # BNNeck statistics over all ranks' batch (docs/distributed.md); default per rank


@dataclass
class LossConfig:
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    diversity_margin: float = 0.3
    diversity_weight: float = 0.5
    gather_across_ranks: bool = True  # batch-hard triplet mines over every rank's features (docs/distributed.md)


@dataclass
class SolverConfig:
    optimizer: str = "adam"
    base_lr: float = 8e-5
    weight_decay: float = 1e-4
    epochs: int = 60
    warmup_epochs: int = 10
    warmup_factor: float = 0.001
    final_factor: float = 0.01
    grad_clip: float = 0.0  # 0 disables clipping
    iters_per_epoch: int | None = None  # None: the PK sampler's epoch length; else epochs are cut to this many steps
    grad_accum_steps: int = 1  # micro-batches per optimiser step; data.batch_size stays the global batch


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    zero_stage: str = "auto"  # auto (0 on one rank, 2 on several) | 0 | 1 | 2 | 3 (docs/performance.md)
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    eval_every: int = 10
    checkpoint_every: int = 0  # optimiser steps between checkpoints inside an epoch; 0: at epoch ends only
    log_every: int = 20
    compile: str = "auto"  # auto (off on CPU, default on GPU: unmeasured) | off | default | max-autotune | ... (fba.compile_modes)
    keep_checkpoints: int = 2  # full (resumable) checkpoints kept besides best_model.pt
    divergence_factor: float = 10.0  # stop when a logged loss exceeds this times the first one (0: never)
    max_skipped_steps: int = 8  # stop when more optimiser steps than this in a row are skipped (0: never)
    preflight: bool = True  # read every image of every split before the first step
    engine_mode: str = "auto"  # auto (= autocast) | autocast | lowp_weights (docs/performance.md)
    auto_resume: bool | None = None  # None: resume when an elastic launcher restarts the workers


@dataclass
class EvalConfig:
    feature: str = "full"  # full (CLS, F_f^V, F_f^T) | image (CLS only)
    rerank: bool = False
    max_rank: int = 50


@dataclass
class EmbedConfig:
    compile: str = "auto"  # torch.compile mode of the embed forward (fba.compile_modes); auto: off on CPU
    cuda_graphs: bool = True  # fba.engine.fast_embed: one CUDA graph per batch bucket (CUDA only)
    graph_batches: list = field(default_factory=lambda: [1, 8, 32, 256])  # buckets a short batch is padded up to


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(InputError):
    """A config file or override names a key that does not exist or gives a value of the wrong type."""


def _valid_keys(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _coerce(value: Any, current: Any, where: str) -> Any:
    if current is None or isinstance(current, dict) or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(current, str):
        return str(value)
    return value


def _declared_scalar(obj: Any, key: str) -> Any:
    """A value of the field's declared scalar type (``int | None`` -> 0), so that ``_coerce`` checks fields
    whose default is None as strictly as the others; None when the field is not a plain scalar."""
    hint = typing.get_type_hints(type(obj))[key]
    kinds = [kind for kind in typing.get_args(hint) or (hint,) if kind is not type(None)]
    return kinds[0]() if len(kinds) == 1 and kinds[0] in (bool, int, float, str) else None


def _set(obj: Any, key: str, value: Any, where: str) -> None:
    if key not in _valid_keys(obj):
        raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(_valid_keys(obj))}")
    current = getattr(obj, key)
    if current is None:
        current = _declared_scalar(obj, key)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key!r} is a section; valid keys: {', '.join(_valid_keys(current))}")
        for sub_key, sub_value in value.items():
            _set(current, sub_key, sub_value, f"{where}.{sub_key}" if where else sub_key)
        return
    setattr(obj, key, _coerce(value, current, where or key))


def apply_dict(cfg: Config, values: dict, source: str = "") -> Config:
    for key, value in values.items():
        _set(cfg, key, value, f"{source}{key}")
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``false``, ``1e-4``, ``[1, 2]``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        target: Any = cfg
        for depth, part in enumerate(parts[:-1]):
            if isinstance(target, dict):  # free-form options, e.g. data.options.subset=detected
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])!r} is a value, not a mapping")
                continue
            section = getattr(target, part) if part in _valid_keys(target) else None
            if not (isinstance(section, dict) or dataclasses.is_dataclass(section)):
                raise ConfigError(
                    f"override {item!r}: unknown section {'.'.join(parts[:depth + 1])!r}; "
                    f"valid: {', '.join(_valid_keys(target))}"
                )
            target = section
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
        if isinstance(target, dict):
            target[parts[-1]] = value
        else:
            _set(target, parts[-1], value, dotted)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then the dotted ``overrides``."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        apply_dict(cfg, values, source=f"{path}: ")
    return apply_overrides(cfg, overrides or [])


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (e.g. inside a checkpoint)."""
    return apply_dict(Config(), values)
