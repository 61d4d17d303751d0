"""The loop's components decide their own cadence: step checkpoints, logging, evaluation, the stop request."""
from __future__ import annotations

from pathlib import Path

from fba.train.cadence import EvaluationCadence, StepCheckpoints
from fba.train.logger import RunLogger
from fba.train.signals import StopRequest


def test_step_checkpoints_skip_the_epoch_end_and_a_zero_period():
    saved = []
    checkpoints = StepCheckpoints(lambda epoch_step: saved.append(epoch_step) or Path(f"c{epoch_step}"), every=3)
    paths = [checkpoints.maybe_save(step, step - 10, last=step == 18) for step in range(11, 19)]
    assert saved == [2, 5]  # steps 12 and 15; step 18 is the epoch's last: the epoch-end checkpoint covers it
    assert paths == [None, Path("c2"), None, None, Path("c5"), None, None, None]
    assert StepCheckpoints(lambda s: Path("x"), every=0).maybe_save(6, 6, last=False) is None


def test_logging_every_n_steps_and_at_the_epoch_end(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=False, log_every=4)
    assert [s for s in range(1, 11) if logger.should_log(s, last=s == 10)] == [4, 8, 10]
    logger.close()


def test_evaluation_every_n_epochs_and_after_the_last():
    cadence = EvaluationCadence(every=3)
    assert [e for e in range(7) if cadence.due(e, final=e == 6)] == [2, 5, 6]


def test_a_stop_waits_for_the_epoch_end_at_its_last_step(monkeypatch):
    stop = StopRequest()
    monkeypatch.setattr(stop, "agreed", lambda world_size, sync_now: 2)
    assert stop.stops_here(1, last=False, sync_now=True) and not stop.stops_here(1, last=True, sync_now=True)
    monkeypatch.setattr(stop, "agreed", lambda world_size, sync_now: None)
    assert not stop.stops_here(1, last=False, sync_now=True)
