"""How a run stops: divergence (non-finite loss, skipped steps, a growing loss), a signal (checkpoint, --resume,
exit 130/143), bad data found in pre-flight before any step, and a failing final evaluation that loses nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _tiny_run import make_tiny_dataset, tiny_config
from fba.train.checkpoint import complete_tags, latest_tag
from fba.train.guard import DivergenceGuard, TrainingDiverged
from fba.train.trainer import Trainer, train


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("stops") / "data")


def test_guard_stops_on_skipped_steps_in_a_row_and_on_growth():
    guard = DivergenceGuard(divergence_factor=10, max_skipped_steps=2)
    for step, skipped in enumerate([1, 2, 2, 3, 4], start=1):  # never more than 2 in a row
        guard.after_step(skipped, epoch=0, step=step)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 6: the optimiser skipped the last 3 steps"):
        guard.after_step(5, epoch=0, step=6)
    guard.check_loss(8.0, epoch=0, step=1)
    guard.check_loss(79.0, epoch=2, step=30)
    with pytest.raises(TrainingDiverged, match="epoch 3, step 31: the loss 81 grew past .*=10 times its early value 8"):
        guard.check_loss(81.0, epoch=2, step=31)
    with pytest.raises(TrainingDiverged, match="loss is inf at step 3"):
        DivergenceGuard(0, 0).check_loss(float("inf"), epoch=0, step=3)
    DivergenceGuard(0, 0).after_step(100, 0, 1)  # 0 switches the checks off


def test_huge_learning_rate_stops_with_epoch_step_and_reason_keeping_the_last_checkpoint(tiny_root, tmp_path):
    # base_lr 1e2 reached after a warm-up from 1e-4: epochs 1 and 2 are checkpointed, the step at lr 50 that ends
    # epoch 2 blows the loss of epoch 3 up
    cfg = tiny_config(tiny_root, tmp_path / "run", "solver.epochs=3", "solver.iters_per_epoch=1", "solver.base_lr=1e2",
                      "solver.warmup_epochs=2", "solver.warmup_factor=1e-6")
    with pytest.raises(TrainingDiverged, match=r"training stopped at epoch 3, step 3: the loss .* grew past.* "
                       r"The last good checkpoint is kept"):
        train(cfg)
    assert latest_tag(tmp_path / "run" / "checkpoints") == "epoch_0002"
    assert not (tmp_path / "run" / "model.pt").exists()


def test_cli_exit_code_of_a_diverged_run(tiny_root, tmp_path, capsys):
    from fba.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  root: {tiny_root}\n")
    code = main(["train", "-c", str(config), f"train.output_dir={tmp_path / 'run'}", "data.height=64", "data.width=32",
                 "data.batch_size=8", "data.num_workers=0", "model.arch=tiny", "model.stride=16",
                 "model.cross_layers=1", "solver.epochs=1", "solver.warmup_epochs=0", "solver.base_lr=1e2",
                 "train.log_every=1", "train.eval_every=100", "train.precision=fp32"])
    err = capsys.readouterr().err
    assert code == 3 and "training stopped at epoch 1, step 2: the loss" in err
    assert "No checkpoint was written yet" in err and "checkpoint is kept" not in err  # none was written


def test_truncated_gallery_image_fails_in_preflight_before_any_step(tmp_path, monkeypatch):
    root = make_tiny_dataset(tmp_path / "data", train_ids=4, test_ids=2)
    bad = sorted((root / "bounding_box_test").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    monkeypatch.setattr(Trainer, "train_epoch", lambda *a: pytest.fail("a step ran before pre-flight"))
    with pytest.raises(OSError, match=f"cannot read image .*{bad.name}"):
        Trainer(tiny_config(root, tmp_path / "run"))


def test_final_checkpoint_and_model_are_written_before_the_final_evaluation(tiny_root, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_root, tmp_path / "run", "solver.epochs=1", "solver.iters_per_epoch=1")
    evaluate = Trainer.evaluate

    def broken(self, epoch):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(Trainer, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        train(cfg)
    assert latest_tag(tmp_path / "run" / "checkpoints") == "epoch_0001"
    assert (tmp_path / "run" / "model.pt").is_file()
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    resumed = train(cfg, resume=True)  # the pending final evaluation runs now
    assert resumed.steps == 1 and set(resumed.final_metrics) >= {"eval/mAP", "eval/R1"}
    records = (tmp_path / "run" / "metrics.jsonl").read_text()
    monkeypatch.setattr(Trainer, "evaluate", lambda self, epoch: pytest.fail("a finished run evaluated again"))
    again = train(cfg, resume=True)  # finished: its outcome is on record
    assert again.final_metrics == resumed.final_metrics and again.best_metrics == resumed.best_metrics
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == records


DIST_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # this process's own
# The signal comes in the middle of step 3 (after its batch is on the device, before its forward), raised by the
# run itself: sent from outside after step 2 is logged, a fast machine had finished all 4 steps before it arrived.
SIGNAL_RUN = """
import signal, sys
sys.path.insert(0, {tests!r})
from fba.cli import main
from fba.train.trainer import TrainStep

batch_inputs, calls = TrainStep.inputs, []

def signalled_in_step_3(self, batch):
    calls.append(1)
    inputs = batch_inputs(self, batch)
    if len(calls) == 3:
        signal.raise_signal({signum})
    return inputs

TrainStep.inputs = signalled_in_step_3
sys.exit(main(["train", "-c", {config!r}]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_writes_a_checkpoint_and_says_resume(tiny_root, tmp_path, signum):
    cfg = tiny_config(tiny_root, tmp_path / "run", "solver.epochs=1", "solver.iters_per_epoch=4", "data.num_workers=0")
    config = tmp_path / "config.yaml"
    import yaml

    config.write_text(yaml.safe_dump(cfg.to_dict()))
    metrics = tmp_path / "run" / "metrics.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_RUN.format(tests=str(Path(__file__).parent), config=str(config),
                                                 signum=int(signum))],
        capture_output=True, text=True, timeout=480,
        env={**{k: v for k, v in os.environ.items() if k not in DIST_VARIABLES},
             "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    err = proc.stderr
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"{name}: stopped at epoch 1, step 3" in err
    assert f"fba train -c {tmp_path / 'run' / 'config.yaml'} --resume" in err and "Traceback" not in err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "loss/total" in line]
    assert steps == [1, 2, 3]  # the signalled step was finished
    tags = complete_tags(tmp_path / "run" / "checkpoints")
    assert tags == ["epoch_0000_step_00000003"] and latest_tag(tmp_path / "run" / "checkpoints") == tags[0]
    resumed = train(cfg, resume=True)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "loss/total" in line]
    assert steps == [1, 2, 3, 4] and resumed.epochs_done == 1  # no step repeated or lost
