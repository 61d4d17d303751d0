"""The engine modes of ``fba train`` (train.engine_mode, train.zero_stage) on the CPU: what each builds, loss curves
that agree with each other and with fp32, and a resume from a mid-epoch checkpoint that is exact in each mode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _tiny_run import make_tiny_dataset, tiny_config
from fba.model.model_file import load_model
from fba.train.logger import RunLogger
from fba.train.trainer import Trainer, train

LOSS_KEYS = ("loss/total", "loss/id", "loss/tri", "loss/id_c", "loss/tri_c", "loss/div")
MODES = {  # name: overrides
    "autocast": ("train.precision=bf16", "train.engine_mode=autocast"),  # the default: ZeRO 0 on one rank
    "autocast-zero2": ("train.precision=bf16", "train.engine_mode=autocast", "train.zero_stage=2"),  # several ranks
    "lowp_weights": ("train.precision=bf16", "train.engine_mode=lowp_weights"),  # bf16 weights, fp32 master, ZeRO-2
    "fp32": ("train.precision=fp32",),
}
COMMON = ("solver.epochs=2", "train.checkpoint_every=2")
BF16_RTOL = 0.03  # any loss term against fp32, relative to the total, per step (measured: docs/performance.md)


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("modes") / "data")


@pytest.fixture(scope="module")
def runs(root, tmp_path_factory):
    """Unbroken runs, one per mode, made on first use."""
    done: dict[str, Path] = {}

    def run(mode: str) -> Path:
        if mode not in done:
            out = tmp_path_factory.mktemp(mode) / "run"
            train(tiny_config(root, out, *COMMON, *MODES[mode]))
            done[mode] = out
        return done[mode]

    return run


def _records(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss/total" in r]


def test_autocast_on_one_rank_is_the_eager_step(root, tmp_path):
    """fp32 weights, torch's multi-tensor Adam stepping them itself (no DeepSpeed optimiser wrapper), ZeRO 0
    and no gradient all-reduce over the one rank; several ranks get ZeRO 2."""
    from fba.train.engine_config import plan_engine

    trainer = Trainer(tiny_config(root, tmp_path / "run", "solver.epochs=1", *MODES["autocast"]))
    engine = trainer.engine
    assert trainer.plan.mode == "autocast" and trainer.plan.zero_stage == 0
    assert type(engine.optimizer) is torch.optim.Adam and engine.optimizer.defaults["foreach"]
    assert not engine.enable_backward_allreduce and engine.torch_autocast_enabled()
    assert all(p.dtype == torch.float32 for p in trainer.module.parameters())
    assert plan_engine(trainer.cfg, "bf16", world_size=4).zero_stage == 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["autocast", "autocast-zero2", "lowp_weights"])
def test_loss_curves_of_the_bf16_modes_agree_with_fp32(runs, mode):
    reference, got = _records(runs("fp32")), _records(runs(mode))
    assert [r["step"] for r in got] == [r["step"] for r in reference] == list(range(1, 9))
    # any term's difference relative to the step's total loss (a satisfied triplet margin makes a term exactly 0)
    diffs = [max(abs(a[k] - b[k]) for k in LOSS_KEYS) / abs(a["loss/total"]) for a, b in zip(reference, got)]
    print(f"\n{mode} vs fp32: max relative loss difference per step {max(diffs):.3g}")
    assert max(diffs) < BF16_RTOL
    if mode == "autocast-zero2":  # ZeRO 2 partitions the same fp32 Adam step: the same numbers as ZeRO 0
        assert [r["loss/total"] for r in got] == pytest.approx([r["loss/total"] for r in _records(runs("autocast"))],
                                                               rel=1e-6)  # measured: identical


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["autocast", "lowp_weights"])
def test_a_crash_mid_epoch_resumes_exactly_from_the_step_checkpoint(root, runs, mode, tmp_path, monkeypatch):
    """Checkpoint at step 2 (mid-epoch 0, train.checkpoint_every=2), crash after step 3, resume: augmentation
    included, the curve and the weights are those of the unbroken run."""
    cfg = tiny_config(root, tmp_path / "run", *COMMON, *MODES[mode])
    original = RunLogger.log

    def crash_after_step_3(self, step, epoch, values):
        original(self, step, epoch, values)
        if step == 3 and "loss/total" in values:
            raise Crash

    monkeypatch.setattr(RunLogger, "log", crash_after_step_3)
    with pytest.raises(Crash):
        train(cfg)
    monkeypatch.setattr(RunLogger, "log", original)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "epoch_0000_step_00000002"
    resumed = train(cfg, resume=True)
    expected = _records(runs(mode))
    got = _records(resumed.output_dir)
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(expected, got):
        assert {k: a[k] for k in (*LOSS_KEYS, "lr")} == {k: b[k] for k in (*LOSS_KEYS, "lr")}, b["step"]
    a, _ = load_model(runs(mode) / "model.pt")
    b, _ = load_model(resumed.model_path)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
