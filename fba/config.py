"""Configs as data: nested dataclasses, YAML files in ``configs/`` and dotted command-line overrides.

A config is checked once, where it is loaded (:func:`load_config`, :func:`config_from_dict`), and nowhere else:
a YAML file and the overrides may only name fields that exist (a wrong key lists the valid ones), every value
must have its field's type, a field typed ``Literal[...]`` takes only those choices, and :func:`validate` checks
ranges and the rules between fields (P x K divisibility, the ablation switches, the schedule). Every problem is
a :class:`ConfigError` (an ``InputError``: the CLI prints it on one line and exits 2), so the code that reads a
loaded config trusts it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
import typing
from typing import Any, Literal

import yaml

from fba.errors import InputError

Loader = Literal["auto", "torch", "dali"]  # auto: DALI on a GPU (when installed), torch on the CPU
Arch = Literal["ViT-B-16", "tiny"]  # fba.model.ARCHS
Kernel = Literal["auto", "reference", "triton", "cuda"]  # fba.kernels.BACKENDS
Optimizer = Literal["adam"]
ZeroStage = Literal["auto", "0", "1", "2", "3"]  # auto: 0 on one rank, 2 on several (fba.train.engine_config)
Precision = Literal["auto", "bf16", "fp16", "fp32"]
EngineMode = Literal["auto", "autocast", "lowp_weights"]  # fba.train.engine_config.ENGINE_MODES
Feature = Literal["full", "image"]  # full: CLS, F_f^V, F_f^T with captions; image: CLS only
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
    loader: Loader = "auto"
    flip_prob: float = 0.5
    padding: int = 10
    erasing_prob: float = 0.5
    test_only: bool = False  # evaluation-only data set (Occluded-ReID): `fba train` refuses it


@dataclass
class ModelConfig:
    arch: Arch = "ViT-B-16"
    pretrained: str | None = None  # local open_clip/OpenAI checkpoint; never downloaded
    stride: int = 12
    cross_modal: bool = True
    diversity: bool = True
    pooling: bool = True
    pool_grad: bool = False
    cross_layers: int = 4
    text_cache: str | None = None  # directory of the frozen text tower's cached outputs
    kernel: Kernel = "auto"
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
    optimizer: Optimizer = "adam"
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
    zero_stage: ZeroStage = "auto"  # docs/performance.md
    precision: Precision = "auto"
    eval_every: int = 10
    checkpoint_every: int = 0  # optimiser steps between checkpoints inside an epoch; 0: at epoch ends only
    log_every: int = 20
    compile: str = "auto"  # auto (off on CPU, default on GPU: unmeasured) | off | default | max-autotune | ... (fba.model.compile_modes)
    keep_checkpoints: int = 2  # full (resumable) checkpoints kept besides best_model.pt
    divergence_factor: float = 10.0  # stop when a logged loss exceeds this times the first one (0: never)
    max_skipped_steps: int = 8  # stop when more optimiser steps than this in a row are skipped (0: never)
    preflight: bool = True  # read every image of every split before the first step
    engine_mode: EngineMode = "auto"  # auto = autocast (docs/performance.md)
    auto_resume: bool | None = None  # None: resume when an elastic launcher restarts the workers


@dataclass
class EvalConfig:
    feature: Feature = "full"
    rerank: bool = False
    max_rank: int = 50


@dataclass
class EmbedConfig:
    compile: str = "auto"  # torch.compile mode of the embed forward (fba.model.compile_modes); auto: off on CPU
    cuda_graphs: bool = True  # fba.embed.fast: one CUDA graph per batch bucket (CUDA only)
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
    """A config file or override names a key that does not exist, gives a value of the wrong type, or breaks a
    range or a rule between fields."""


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


def choices(section: type, key: str) -> tuple | None:
    """The values a ``Literal``-typed field takes, or None for a free field."""
    hint = typing.get_type_hints(section)[key]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _check_choice(obj: Any, key: str, value: Any, where: str) -> None:
    allowed = choices(type(obj), key)
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, allowed))}, got {value!r}")


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
    value = _coerce(value, current, where or key)
    _check_choice(obj, key, value, where or key)
    setattr(obj, key, value)


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


_RULES: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("data.height", lambda v: v >= 1, ">= 1"),
    ("data.width", lambda v: v >= 1, ">= 1"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.num_instances", lambda v: v >= 1, ">= 1"),
    ("data.eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("data.num_workers", lambda v: v >= 0, ">= 0"),
    ("data.flip_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.padding", lambda v: v >= 0, ">= 0"),
    ("data.erasing_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("model.stride", lambda v: v >= 1, ">= 1"),
    ("model.cross_layers", lambda v: v >= 0, ">= 0"),
    ("loss.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("loss.triplet_margin", lambda v: v >= 0, ">= 0"),
    ("loss.diversity_margin", lambda v: v >= 0, ">= 0"),
    ("loss.diversity_weight", lambda v: v >= 0, ">= 0"),
    ("solver.base_lr", lambda v: v > 0, "> 0"),
    ("solver.weight_decay", lambda v: v >= 0, ">= 0"),
    ("solver.epochs", lambda v: v >= 1, ">= 1"),
    ("solver.warmup_factor", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("solver.final_factor", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("solver.grad_clip", lambda v: v >= 0, ">= 0 (0 disables it)"),
    ("solver.iters_per_epoch", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("solver.grad_accum_steps", lambda v: v >= 1, ">= 1"),
    ("train.eval_every", lambda v: v >= 1, ">= 1"),
    ("train.checkpoint_every", lambda v: v >= 0, ">= 0 (0: at epoch ends only)"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.keep_checkpoints", lambda v: v >= 1, ">= 1"),
    ("train.divergence_factor", lambda v: v == 0 or v > 1, "> 1, or 0 to never stop"),
    ("train.max_skipped_steps", lambda v: v >= 0, ">= 0 (0: never stop)"),
    ("eval.max_rank", lambda v: v >= 1, ">= 1"),
]


def validate(cfg: Config) -> Config:
    """Ranges and the rules between fields; raises one :class:`ConfigError` naming every problem."""
    problems = []
    for dotted, ok, expected in _RULES:
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if not ok(value):
            problems.append(f"{dotted} must be {expected}, got {value!r}")
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj):
            allowed = choices(type(obj), f.name)
            if allowed is not None and getattr(obj, f.name) not in allowed:
                problems.append(f"{section.name}.{f.name} must be one of {', '.join(map(str, allowed))}, "
                                f"got {getattr(obj, f.name)!r}")
    data, model, solver = cfg.data, cfg.model, cfg.solver
    if data.batch_size % data.num_instances:
        problems.append(f"data.batch_size ({data.batch_size}) must be a multiple of data.num_instances "
                        f"({data.num_instances}): a batch is P identities x K images")
    if not model.cross_modal and (model.diversity or model.pooling):
        problems.append("model.diversity and model.pooling need model.cross_modal=true; "
                        "for the baseline set all three to false")
    if model.pool_grad and not model.pooling:
        problems.append("model.pool_grad needs model.pooling=true (it trains through the pooling weights)")
    for dotted in ("train.compile", "embed.compile"):
        section, key = dotted.split(".")
        mode = getattr(getattr(cfg, section), key)
        if str(mode).lower() not in (*COMPILE_MODES, "true", "false"):
            problems.append(f"{dotted} must be one of {', '.join(COMPILE_MODES)} (true/false: default/off), "
                            f"got {mode!r}")
    batches = cfg.embed.graph_batches
    if not batches or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in batches):
        problems.append(f"embed.graph_batches must be a non-empty list of batch sizes >= 1, got {batches!r}")
    if not 0 <= solver.warmup_epochs <= solver.epochs:
        problems.append(f"solver.warmup_epochs must be in [0, solver.epochs={solver.epochs}], "
                        f"got {solver.warmup_epochs}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then the dotted ``overrides``; then :func:`validate`."""
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
    return validate(apply_overrides(cfg, overrides or []))


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (e.g. inside a checkpoint), checked as a loaded one."""
    return validate(apply_dict(Config(), values))
