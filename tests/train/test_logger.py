import json

import pytest

from fba.train.logger import METRICS_FILE, RunLogger


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _log_steps(out, steps, resume_step=None):
    logger = RunLogger(out, resume_step=resume_step, tensorboard=False)
    for step in steps:
        logger.log(step, 0, {"loss/total": 1.0 / step})
    logger.close()


def test_resume_drops_records_after_the_checkpoint_and_a_cut_off_last_line(tmp_path):
    _log_steps(tmp_path, [1, 2, 3, 4])
    path = tmp_path / METRICS_FILE
    path.write_text(path.read_text() + '{"step": 5, "epo')
    _log_steps(tmp_path, [3, 4], resume_step=2)
    assert _steps(path) == [1, 2, 3, 4]


def test_a_broken_line_inside_the_log_names_file_and_line(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}, line 2: not valid JSON"):
        RunLogger(tmp_path, resume_step=1, tensorboard=False)


def test_a_fresh_run_starts_both_logs_anew(tmp_path):
    _log_steps(tmp_path, [1, 2, 3])
    events = tmp_path / "tensorboard" / "events.out.tfevents.old"
    events.parent.mkdir()
    events.write_bytes(b"earlier run")
    _log_steps(tmp_path, [1])
    assert _steps(tmp_path / METRICS_FILE) == [1]
    assert not events.exists()
