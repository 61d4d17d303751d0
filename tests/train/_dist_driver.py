"""One training run for the distributed tests, launched by torchrun (or imported for the one-process twin).

    python _dist_driver.py ROOT OUT [--kill-rank R --kill-at-step N] [dotted overrides...]

Every rank appends the dataset indices of each micro-batch it trains on to ``OUT/batches_rank<r>.jsonl``.
``--kill-rank/--kill-at-step``: in the first attempt of an elastic launch (TORCHELASTIC_RESTART_COUNT=0), rank
R SIGKILLs itself right after optimiser step N, as a lost worker would die.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared _tiny_run

from _tiny_run import tiny_config  # noqa: E402
from fba.train import trainer as trainer_module  # noqa: E402
from fba.train.logger import RunLogger  # noqa: E402


def record_batches(out: Path, setattr_=setattr) -> None:
    """Make the trainer log every micro-batch's dataset indices, per rank (``setattr_``: e.g. monkeypatch's)."""
    original_init = trainer_module.Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        inputs = self.step_fn.inputs

        def recording(batch):  # the trainer's step moves each micro-batch to the device here
            with open(out / f"batches_rank{self.env.rank}.jsonl", "a") as file:
                file.write(json.dumps({"step": self.step, "index": batch["index"].tolist()}) + "\n")
            return inputs(batch)

        self.step_fn.inputs = recording

    setattr_(trainer_module.Trainer, "__init__", init)


def kill_after(rank: int, step: int) -> None:
    original = RunLogger.log

    def log(self, at_step, epoch, values):
        original(self, at_step, epoch, values)
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if at_step == step and int(os.environ.get("RANK", "0")) == rank and first_attempt and "loss/total" in values:
            os.kill(os.getpid(), signal.SIGKILL)

    RunLogger.log = log


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-rank", type=int)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    args.out.mkdir(parents=True, exist_ok=True)
    record_batches(args.out)
    if args.kill_at_step is not None:
        kill_after(args.kill_rank, args.kill_at_step)
    trainer_module.train(tiny_config(args.root, args.out, *args.overrides))


if __name__ == "__main__":
    main()
