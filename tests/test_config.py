"""Configs: the shipped YAML files (paper recipe), dotted overrides, and errors that list the valid keys."""
from __future__ import annotations

from pathlib import Path

import pytest

from fba.config import Config, ConfigError, config_from_dict, load_config
from fba.train.trainer import check_trainable

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = {"dukemtmc": 8e-5, "occluded_duke": 8e-5, "cuhk03np": 1.2e-4, "market1501": 8e-5, "msmt17": 8e-5}


@pytest.mark.parametrize("name,lr", sorted(PAPER.items()))
def test_paper_configs_carry_the_recipe(name, lr):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    check_trainable(cfg)
    assert cfg.data.dataset == name and cfg.solver.base_lr == pytest.approx(lr)
    assert (cfg.data.height, cfg.data.width, cfg.model.stride, cfg.model.arch) == (384, 128, 12, "ViT-B-16")
    assert (cfg.data.batch_size, cfg.data.num_instances) == (64, 4)
    assert (cfg.solver.epochs, cfg.solver.warmup_epochs, cfg.solver.weight_decay) == (60, 10, 1e-4)
    assert (cfg.solver.warmup_factor, cfg.solver.final_factor, cfg.train.zero_stage) == (0.001, 0.01, "auto")


def test_cuhk03np_uses_labeled_images():
    assert load_config(CONFIGS / "cuhk03np.yaml").data.options == {"subset": "labeled"}


def test_occluded_reid_is_test_only_and_points_to_cuhk03np():
    cfg = load_config(CONFIGS / "occluded_reid.yaml")
    assert cfg.data.test_only
    with pytest.raises(ConfigError, match="test-only.*configs/cuhk03np.yaml"):
        check_trainable(cfg)


def test_synthetic_config_is_cpu_sized():
    cfg = load_config(CONFIGS / "synthetic.yaml")
    check_trainable(cfg)
    assert cfg.model.arch == "tiny" and cfg.data.height * cfg.data.width <= 192 * 64
    assert cfg.solver.epochs <= 30 and cfg.model.pretrained is None


def test_dotted_overrides_change_values_with_types():
    cfg = load_config(CONFIGS / "dukemtmc.yaml", ["model.pooling=false", "solver.epochs=10", "solver.base_lr=1e-4",
                                                   "data.options={subset: detected}", "model.text_cache=/tmp/c"])
    assert cfg.model.pooling is False and cfg.solver.epochs == 10 and cfg.solver.base_lr == 1e-4
    assert cfg.data.options == {"subset": "detected"} and cfg.model.text_cache == "/tmp/c"
    assert config_from_dict(cfg.to_dict()) == cfg


def test_overrides_reach_into_option_mappings_and_type_check_fields_that_default_to_none():
    cfg = load_config(CONFIGS / "cuhk03np.yaml", ["data.options.subset=detected", "solver.iters_per_epoch=7",
                                                  "model.pretrained=123"])
    assert cfg.data.options == {"subset": "detected"}
    assert cfg.solver.iters_per_epoch == 7 and cfg.model.pretrained == "123"
    assert load_config(None, ["solver.iters_per_epoch=null"]).solver.iters_per_epoch is None
    with pytest.raises(ConfigError, match=r"'data.options.subset' is a value, not a mapping"):
        load_config(CONFIGS / "cuhk03np.yaml", ["data.options.subset.deep=1"])


@pytest.mark.parametrize("override,message", [
    ("model.poolin=false", r"unknown key 'poolin'; valid keys: .*pooling"),
    ("modle.pooling=false", r"unknown section 'modle'; valid: data, model, loss, solver, train, eval"),
    ("solver.epochs=ten", r"solver.epochs: expected an integer"),
    ("solver.base_lr=fast", r"solver.base_lr: expected a number"),
    ("model.pooling=maybe", r"model.pooling: expected true/false"),
    ("model.pooling", r"not of the form section.key=value"),
    ("model=tiny", r"'model' is a section; valid keys: arch"),
    ("solver.iters_per_epoch=abc", r"solver.iters_per_epoch: expected an integer"),
    ("model.arch.depth=2", r"unknown section 'model.arch'"),
])
def test_bad_overrides_are_errors_listing_what_is_valid(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("solver:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=f"{path}: solver.epoch.*valid keys: .*epochs"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_train_reports_a_wrong_key(cli_error):
    cli_error(["train", "-c", CONFIGS / "dukemtmc.yaml", "model.poolin=false"], "unknown key 'poolin'; valid keys")


def test_defaults_match_the_spec():
    cfg = Config()
    assert (cfg.loss.label_smoothing, cfg.loss.triplet_margin, cfg.loss.diversity_weight) == (0.1, 0.3, 0.5)
    assert cfg.train.precision == "auto" and cfg.solver.grad_accum_steps == 1


@pytest.mark.parametrize("overrides,message", [
    (["data.loader=fast"], r"data.loader: must be one of auto, torch, dali, got 'fast'"),
    (["train.zero_stage=4"], r"train.zero_stage: must be one of auto, 0, 1, 2, 3, got '4'"),
    (["train.engine_mode=fp8"], r"train.engine_mode: must be one of auto, autocast, lowp_weights"),
    (["eval.feature=text"], r"eval.feature: must be one of full, image"),
    (["model.arch=ViT-L-14"], r"model.arch: must be one of ViT-B-16, tiny"),
    (["data.batch_size=30"], r"data.batch_size \(30\) must be a multiple of data.num_instances \(4\)"),
    (["data.flip_prob=1.5"], r"data.flip_prob must be in \[0, 1\], got 1.5"),
    (["train.log_every=0"], r"train.log_every must be >= 1"),
    (["eval.max_rank=0"], r"eval.max_rank must be >= 1"),
    (["model.cross_modal=false", "model.diversity=false"], r"model.pooling need model.cross_modal=true"),
    (["model.pooling=false", "model.pool_grad=true"], r"model.pool_grad needs model.pooling=true"),
])
def test_values_are_checked_when_the_config_is_loaded(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_every_problem_is_named_at_once_and_is_an_input_error():
    from fba.errors import InputError

    with pytest.raises(InputError, match=r"data.num_workers must be >= 0.*solver.epochs must be >= 1"):
        load_config(None, ["data.num_workers=-1", "solver.epochs=0", "solver.warmup_epochs=0"])


def test_a_saved_config_is_checked_as_a_loaded_one():
    values = Config().to_dict()
    values["data"]["batch_size"] = 6
    with pytest.raises(ConfigError, match="multiple of data.num_instances"):
        config_from_dict(values)


def test_literal_choices_match_the_registries():
    import typing

    from fba.config import Arch
    from fba.model import ARCHS

    assert set(typing.get_args(Arch)) == set(ARCHS)


@pytest.mark.parametrize("overrides,message", [
    (["train.compile=fastest"], r"train.compile must be one of auto, off, default"),
    (["embed.compile=1"], r"embed.compile must be one of"),
    (["embed.graph_batches=[]"], r"embed.graph_batches must be a non-empty list"),
    (["embed.graph_batches=[8, 0]"], r"embed.graph_batches must be"),
])
def test_compile_and_embed_settings_are_checked_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    assert load_config(None, ["train.compile=true", "embed.compile=max-autotune"]).train.compile == "True"


def test_run_guard_settings_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"train.divergence_factor must be > 1, or 0"):
        load_config(None, ["train.divergence_factor=0.5"])
    with pytest.raises(ConfigError, match=r"train.max_skipped_steps must be >= 0"):
        load_config(None, ["train.max_skipped_steps=-1"])
    assert load_config(None, ["train.divergence_factor=0"]).train.divergence_factor == 0
