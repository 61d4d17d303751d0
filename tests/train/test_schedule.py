"""The schedule of docs/design.md#training-recipe: warm-up from 0.001x, cosine to 0.01x, per iteration on the
fractional epoch."""
from __future__ import annotations

import pytest
import torch

from fba.config import ConfigError, SolverConfig, load_config
from fba.train.schedule import EpochCosineSchedule, lr_factor


def _cfg(**kw) -> SolverConfig:
    return SolverConfig(**{"base_lr": 8e-5, "epochs": 60, "warmup_epochs": 10, **kw})


def test_factor_at_the_landmarks_of_spec():
    cfg = _cfg()
    assert lr_factor(0.0, cfg) == pytest.approx(0.001)
    assert lr_factor(5.0, cfg) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(10.0, cfg) == pytest.approx(1.0)
    assert lr_factor(35.0, cfg) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(60.0, cfg) == pytest.approx(0.01)
    assert lr_factor(75.0, cfg) == pytest.approx(0.01)


def test_factor_rises_then_falls():
    cfg = _cfg()
    points = [lr_factor(e / 10, cfg) for e in range(0, 601)]
    peak = points.index(max(points))
    assert peak == 100
    assert all(a < b for a, b in zip(points[:peak], points[1:peak + 1]))
    assert all(a > b for a, b in zip(points[peak:-1], points[peak + 1:]))


def test_no_warmup_starts_at_base():
    assert lr_factor(0.0, _cfg(warmup_epochs=0)) == pytest.approx(1.0)


def _scheduler(cfg: SolverConfig) -> tuple[EpochCosineSchedule, torch.optim.Optimizer]:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=cfg.base_lr)
    return EpochCosineSchedule(optimizer, cfg), optimizer


@pytest.mark.parametrize("lengths", [[7, 5, 9], [3, 3, 3]])
def test_each_step_is_on_the_fractional_epoch(lengths):
    cfg = _cfg(epochs=3, warmup_epochs=1)
    scheduler, optimizer = _scheduler(cfg)
    for epoch, length in enumerate(lengths):
        scheduler.begin_epoch(epoch, length)
        for i in range(length):
            expected = cfg.base_lr * lr_factor(epoch + i / length, cfg)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
            assert scheduler.get_last_lr()[0] == pytest.approx(expected, rel=1e-12)
            optimizer.step()
            scheduler.step()


def test_state_dict_resumes_the_curve():
    cfg = _cfg(epochs=4, warmup_epochs=1)
    first, opt_first = _scheduler(cfg)
    first.begin_epoch(0, 6)
    for _ in range(4):
        opt_first.step()
        first.step()
    state = first.state_dict()
    assert "cfg" not in state
    second, opt_second = _scheduler(cfg)
    second.load_state_dict(state)
    for sched, opt in ((first, opt_first), (second, opt_second)):
        opt.step()
        sched.step()
    assert opt_second.param_groups[0]["lr"] == opt_first.param_groups[0]["lr"]
    assert second.progress == pytest.approx(5 / 6)


def test_empty_epoch_is_an_error():
    scheduler, _ = _scheduler(_cfg())
    with pytest.raises(ValueError, match="no optimiser step"):
        scheduler.begin_epoch(0, 0)


@pytest.mark.parametrize("field,value,message", [
    ("epochs", 0, "solver.epochs"),
    ("warmup_epochs", 70, "solver.warmup_epochs"),
    ("base_lr", -1.0, "solver.base_lr"),
    ("grad_accum_steps", 0, "solver.grad_accum_steps"),
    ("optimizer", "sgd", "solver.optimizer"),
    ("grad_clip", -1.0, "solver.grad_clip"),
])
def test_bad_solver_settings_are_named_when_loaded(field, value, message):
    paper = ["solver.base_lr=8e-5", "solver.epochs=60", "solver.warmup_epochs=10"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*paper, f"solver.{field}={value}"])
    load_config(None, paper)  # the paper's settings pass
