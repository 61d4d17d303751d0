"""Training logs: a tqdm bar per epoch, TensorBoard scalars and the ``metrics.jsonl`` file of docs/architecture.md.

Only rank 0 writes; on other ranks every method is a no-op. A resumed run first drops the records written
after the checkpoint it resumes from (a killed run may have logged steps that are replayed now, and may have
been cut off in the middle of its last line), so the file holds one record per step whatever happened. A fresh
run starts both logs anew, so that no earlier run's curves mix with its own.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from fba.utils.atomic import atomic_write_bytes
from fba.utils.jsonl import parse_object

METRICS_FILE = "metrics.jsonl"


class RunLogger:
    def __init__(self, output_dir: str | Path, rank: int = 0, resume_step: int | None = None, tensorboard: bool = True,
                 log_every: int = 1):
        self.output_dir = Path(output_dir)
        self.log_every = log_every
        self.enabled = rank == 0
        self.metrics_path = self.output_dir / METRICS_FILE
        self._file = None
        self._writer = None
        self._bar: tqdm | None = None
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        self._file = self.metrics_path.open("a", encoding="utf-8")
        if tensorboard:
            self._writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=resume_step and resume_step + 1)

    def _truncate(self, resume_step: int | None) -> None:
        if resume_step is None:
            self.metrics_path.unlink(missing_ok=True)
            shutil.rmtree(self.output_dir / "tensorboard", ignore_errors=True)
            return
        if not self.metrics_path.exists():
            return
        text = self.metrics_path.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()  # cut off mid-write by the kill this run resumes from
        kept = [line for number, line in enumerate(lines, 1) if line.strip()
                and parse_object(line, f"{self.metrics_path}, line {number}").get("step", 0) <= resume_step]
        atomic_write_bytes(self.metrics_path, "".join(f"{line}\n" for line in kept).encode())

    def should_log(self, step: int, last: bool) -> bool:
        """Whether the training record of optimiser step ``step`` is written: every ``log_every`` steps and at the
        epoch's last one. Every rank asks (the losses are averaged over ranks when one is written)."""
        return step % self.log_every == 0 or last

    def log(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """One record ``{"step", "epoch", **values}`` to metrics.jsonl and each value to TensorBoard."""
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": int(epoch)}
        record.update({k: float(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, float(value), int(step))

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.enabled:
            self._bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", dynamic_ncols=True, leave=True)

    def advance(self, loss: float | None = None, images_per_s: float | None = None) -> None:
        """One step on the bar; the postfix changes only when the numbers are given (at log intervals)."""
        if self._bar is None:
            return
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}", refresh=False)
        self._bar.update(1)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        self.end_epoch()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
