"""Configs: the shipped YAML files (paper recipe), dotted overrides, and errors that list the valid keys."""
from __future__ import annotations

from pathlib import Path

import pytest

from fba.cli import main
from fba.config import Config, ConfigError, config_from_dict, load_config
from fba.engine.trainer import check_trainable

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
