"""``fba train``: FBA trained with a DeepSpeed engine on every run, one process or many.

Launch: one process (``fba train -c ...``, the distributed environment is filled in: rank 0 of 1), several on
one node or several nodes (``torchrun --nproc_per_node 8 -m fba.cli train -c ...`` or
``deepspeed --module fba.cli train -c ...``: they set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*). The engine
(``fba.train.engine_config``: ``train.engine_mode``, ``train.zero_stage``) runs with ``train.precision``: bf16
where the device has it (on a CPU only with native bf16, ``fba.utils.precision``), fp16 with dynamic loss scaling on
GPUs without bf16, or fp32. On the CPU the backend is gloo, the optimiser torch's Adam (multi-tensor), and
DeepSpeed's shared-memory collective (a 100 s C++ build) is switched off.

Batches (docs/distributed.md): ``data.batch_size`` (P x K) is the global batch of one optimiser step at any
world size W and accumulation A; each rank's micro-step holds P / (W x A) identities x K. The epoch length, the
learning rate and its schedule are therefore the same at any world size (tested: W=2 against W=1).

Schedule: docs/design.md#training-recipe, per optimiser step as a function of the fractional epoch
(``fba.train.schedule``), because the P x K epoch length varies a little from epoch to epoch. With
``solver.iters_per_epoch`` set, epochs are cut to that many optimiser steps.

Text: the captions of each split are tokenised once (or, with ``model.text_cache``, the frozen tower's outputs
are computed once through the cache) and a step gathers the rows of its batch by ``index``. The step never
syncs with the host: loss terms are summed on the device and read at the log interval only.

Resume (``--resume``, or ``train.auto_resume``, on by default when an elastic launcher restarts the workers)
restores weights, optimiser, schedule, sampler position and every rank's RNG from the checkpoint the ``latest``
pointer names, or without one from the newest complete checkpoint (it says which; nothing is deleted). A
checkpoint is written at every epoch end, every ``train.checkpoint_every`` optimiser steps, and when SIGINT /
SIGTERM stops a run (at the next optimiser-step boundary; exit 130 / 143); a mid-epoch one records the
optimiser steps of the epoch already done (``epoch_step``), which the sampler skips. The loss curve continues
exactly as an unbroken run's (tested, also for a worker killed mid-epoch under ``torchrun --max-restarts``).
The final checkpoint and ``model.pt`` are written before the final evaluation, which a resume runs if it was
cut short. Augmentation in DataLoader worker processes draws from streams seeded by (seed, rank, epoch) when
the loader's ``set_epoch`` runs, so it resumes exactly too.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from fba.config import Config, ConfigError, load_config
from fba.model.compile_modes import compile_kwargs, resolve_compile_mode
from fba.data.datasets import ReIDDataset
from fba.data.loaders import Loaders, load_data
from fba.data.sampler import PKBatchError
from fba.train.cadence import EvaluationCadence, StepCheckpoints
from fba.model.model_file import export_model
from fba.train.checkpoint import final_evaluation, load_checkpoint, record_final_evaluation, resume_tag, save_checkpoint
from fba.distributed import (
    elastic_restart, init_process_group, is_main_rank, launch_world_size, micro_batch_size,
)
from fba.embed.embedder import Embedder
from fba.train.engine_config import EnginePlan, build_optimizer, initialize_engine, plan_engine
from fba.train.guard import DivergenceGuard, TrainingDiverged
from fba.train.logger import RunLogger
from fba.train.preflight import preflight_dataset
from fba.retrieval.eval_set import RetrievalEval
from fba.train.signals import StopRequest, TrainingInterrupted
from fba.train.run_folder import claim_run_folder
from fba.train.run_lock import releases_run_lock_on_error
from fba.train.schedule import EpochCosineSchedule
from fba.embed.text_bank import TextBank
from fba.losses import FBALoss
from fba.retrieval.metrics import RetrievalMetrics
from fba.model import build_model
from fba.model.heads import sync_batchnorm
from fba.utils.precision import auto_cpu_precision



@dataclass
class TrainResult:
    output_dir: Path
    model_path: Path
    metrics_path: Path
    best_model_path: Path | None
    final_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation, "eval/mAP" etc. in percent
    best_metrics: dict[str, float] = field(default_factory=dict)
    epochs_done: int = 0
    steps: int = 0


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed() -> DistEnv:
    """Read (or, without a launcher, fill in) the distributed environment and initialise DeepSpeed's backend."""
    alone = "MASTER_PORT" not in os.environ and os.environ.get("WORLD_SIZE", "1") == "1"
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    local_rank = int(os.environ["LOCAL_RANK"])
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        device = torch.device("cpu")
    if not dist.is_initialized():
        init_process_group("nccl" if on_gpu else "gloo", alone)
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")  # adopts torch's process group
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` on this device: ``auto`` is bf16 where the device has it (on a CPU: what the precision
    probe finds fast), else fp16; what the device cannot do is refused (the one config check that needs the
    device)."""
    if device.type == "cpu":
        if precision == "fp16":
            raise ConfigError("train.precision=fp16 is not supported on the CPU; use bf16 (or fp32)")
        if precision == "auto":
            precision, why = auto_cpu_precision()
            if is_main_rank():
                print(f"train.precision=auto: {precision} on this CPU ({why})")
        return precision
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16 or auto")
    return precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_trainable(cfg: Config, world_size: int = 1) -> None:
    """Refuse a valid config that still cannot be trained before any work starts: an evaluation-only data set,
    or a P x K batch that does not split over this world size (the config itself was checked when loaded)."""
    if cfg.data.test_only or cfg.data.dataset == "occluded_reid":
        raise ConfigError(
            f"data set {cfg.data.dataset!r} is test-only (no training split). As in the paper, train on CUHK03-NP "
            "(fba train -c configs/cuhk03np.yaml) and evaluate that model here: "
            "fba eval -c configs/occluded_reid.yaml --checkpoint runs/cuhk03np/model.pt"
        )
    micro_batch_size(cfg.data.batch_size, cfg.data.num_instances, world_size, cfg.solver.grad_accum_steps)


def build_engine(cfg: Config, model: torch.nn.Module, plan: EnginePlan):
    """The DeepSpeed engine ``fba train`` steps: the optimiser of ``fba.train.engine_config`` over the trainable
    parameters, the per-iteration schedule of docs/design.md#training-recipe, the engine of ``plan``
    (``train.engine_mode``, ``train.zero_stage``), and ``train.compile``. Returns ``(engine, scheduler)``; call
    :func:`setup_distributed` first."""
    device = next(model.parameters()).device
    optimizer = build_optimizer(cfg, model.trainable_parameters(), device)
    scheduler = EpochCosineSchedule(optimizer, cfg.solver)
    engine = initialize_engine(model, optimizer, scheduler, cfg, plan)
    compile_mode = resolve_compile_mode(cfg.train.compile, device)
    if compile_mode:
        engine.compile(compile_kwargs=compile_kwargs(compile_mode))
    return engine, scheduler


@dataclass
class StepResult:
    """One micro-step: the loss terms (``total`` first) stacked on the device, and whether the optimiser stepped."""

    losses: torch.Tensor
    names: list[str]
    boundary: bool


class TrainStep:
    """One training micro-step of ``fba train``: batch to the device, forward through the engine, the FBA loss,
    backward and ``engine.step()`` (which steps the optimiser at each gradient-accumulation boundary).

    ``input_dtype`` is the dtype the engine takes its inputs in (``EnginePlan.weight_dtype``). The step never syncs
    with the host. ``mark`` (optional) is called with a section name as each section ends (``data``,
    ``heads_fwd``, ``loss_fwd``, ``backbone_bwd``, ``optimizer``), so a benchmark can split the time of the very
    step the trainer runs.
    """

    def __init__(self, engine, criterion: FBALoss, bank: TextBank | None, input_dtype: torch.dtype,
                 device: torch.device):
        self.engine = engine
        self.criterion = criterion
        self.bank = bank
        self.input_dtype = input_dtype
        self.device = device

    def inputs(self, batch: dict):
        """``(images, pids, fg, bg)`` on the device in the engine's input dtype, captions gathered by ``index``."""
        images = batch["images"].to(self.device, non_blocking=True).to(self.input_dtype)
        pids = batch["pids"].to(self.device, non_blocking=True)
        fg = bg = None
        if self.bank is not None:
            fg, bg = self.bank.select(batch["index"], self.input_dtype)
        return images, pids, fg, bg

    def __call__(self, batch: dict, mark: Callable[[str], None] | None = None) -> StepResult:
        mark = mark or _no_mark
        engine = self.engine
        images, pids, fg, bg = self.inputs(batch)
        mark("data")
        outputs = engine(images, fg, bg)
        mark("heads_fwd")
        total, parts = self.criterion({k: v.float() for k, v in outputs.items()}, pids)
        mark("loss_fwd")
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(total)
        mark("backbone_bwd")
        engine.step()
        mark("optimizer")
        return StepResult(torch.stack([total.detach(), *parts.values()]), ["total", *parts], boundary)


def _no_mark(_section: str) -> None:
    pass


def _caption_bank(dataset, split: str, store, model, device: torch.device, env: DistEnv) -> TextBank | None:
    """Text inputs of one split; with a text cache rank 0 encodes first, the other ranks then read its files."""
    if store is None:
        return None
    if model.text_cache is not None and env.world_size > 1:
        if env.rank == 0:
            TextBank.for_split(model, dataset, split, store, device, progress=True)
        dist.barrier()
    return TextBank.for_split(model, dataset, split, store, device, progress=env.rank == 0)


class Trainer:
    """One training run; ``train(cfg)`` is the way in."""

    @releases_run_lock_on_error
    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False):
        check_trainable(cfg, launch_world_size())
        self.cfg = cfg
        self.env = env = setup_distributed()
        self.precision = resolve_precision(cfg.train.precision, env.device)
        self.plan = plan_engine(cfg, self.precision, env.world_size)
        self.dtype = self.plan.compute_dtype
        self.input_dtype = self.plan.weight_dtype
        self.output_dir = Path(cfg.train.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        # an automatic resume (an elastic restart) continues this run's own checkpoints, as --resume does
        auto = cfg.train.auto_resume if cfg.train.auto_resume is not None else elastic_restart()
        self.run_lock = claim_run_folder(self.output_dir, env.rank, resume or auto, overwrite)

        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        self.dataset: ReIDDataset
        self.dataset, store = load_data(cfg)
        self.loaders = Loaders.for_device(cfg, env.device)
        if cfg.train.preflight:
            preflight_dataset(self.dataset, env.rank, env.world_size, progress=env.rank == 0)
        self.image_size = (cfg.data.height, cfg.data.width)
        self.num_classes = self.dataset.num_train_pids
        model = build_model(cfg.model, self.num_classes, self.image_size).to(env.device)
        if cfg.model.sync_bn:
            sync_batchnorm(model)
        self.train_bank = _caption_bank(self.dataset, "train", store, model, env.device, env)
        self.eval_banks = {
            split: _caption_bank(self.dataset, split, store, model, env.device, env) for split in ("query", "gallery")
        } if cfg.eval.feature == "full" else {"query": None, "gallery": None}

        self.loader = self.loaders.train(self.dataset.train, env.rank, env.world_size)
        self._epoch_length(0)  # P x K errors surface here, before DeepSpeed starts
        self.engine, self.scheduler = build_engine(cfg, model, self.plan)
        self.step_fn = TrainStep(self.engine, FBALoss(cfg.loss, cfg.model), self.train_bank, self.input_dtype,
                                 env.device)

        self.start_epoch, self.step, self.best_map = 0, 0, -1.0
        self.start_step_in_epoch = 0  # optimiser steps of start_epoch already done (a mid-epoch checkpoint)
        self.final_eval_pending = False
        self.early_loss: float | None = None
        self.stop = StopRequest()
        self.last_eval: dict[str, float] = {}
        self.best_eval: dict[str, float] = {}
        resumed = self._resume(quiet=not resume) if resume or auto else False
        if not resumed:
            seed_everything(cfg.train.seed * 1000 + env.rank)  # augmentation streams differ between ranks
            if env.rank == 0 and not (resume or auto):
                self._clear_earlier_run()
        if env.rank == 0:  # after a resume was checked, so a refused one leaves the run's config.yaml alone
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.logger = RunLogger(self.output_dir, env.rank, resume_step=self.step if resumed else None,
                                log_every=cfg.train.log_every)
        self.evaluation = EvaluationCadence(cfg.train.eval_every)
        self.guard = DivergenceGuard(cfg.train.divergence_factor, cfg.train.max_skipped_steps,
                                     skipped_so_far=self.engine.skipped_steps, early_loss=self.early_loss,
                                     has_checkpoint=resumed)

    def _resume(self, quiet: bool = False) -> bool:
        """Continue from the newest checkpoint (``--resume``, or ``quiet``: an automatic resume after an elastic
        restart, which starts afresh without a warning when there is none). Nothing is deleted."""
        tag, how = resume_tag(self.checkpoint_dir)
        if tag is None:
            if not quiet:
                print(f"--resume: {how}; starting from the beginning (nothing was deleted)", file=sys.stderr)
            return False
        if self.env.rank == 0:
            print(how)
        state = load_checkpoint(self.engine, self.checkpoint_dir, tag)
        if state.get("epoch_step") is None:
            self.start_epoch = int(state["epoch"]) + 1
        else:
            self.start_epoch, self.start_step_in_epoch = int(state["epoch"]), int(state["epoch_step"])
        self.step = int(state["step"])
        self.best_map = float(state["best_map"])
        self.best_eval = dict(state.get("best_eval", {}))
        self.last_eval = dict(state.get("last_eval", {}))
        self.loader.load_state_dict(state["sampler"])
        self.final_eval_pending = bool(state.get("final_eval_pending", False))
        outcome = final_evaluation(self.checkpoint_dir, tag) if self.final_eval_pending else None
        if outcome is not None:  # a finished run: its final evaluation is on record
            self.final_eval_pending = False
            self.best_map, self.best_eval = float(outcome["best_map"]), dict(outcome["best_eval"])
            self.last_eval = dict(outcome["last_eval"])
        self.early_loss = state.get("early_loss")
        if self.env.rank == 0:
            print(f"resumed from {self.checkpoint_dir / tag} (epoch {self.start_epoch}, step {self.step})")
        return True

    def _clear_earlier_run(self) -> None:
        """A fresh run with ``--overwrite`` replaces what an earlier run left in its output folder."""
        if not self.checkpoint_dir.is_dir():
            return
        shutil.rmtree(self.checkpoint_dir)
        (self.output_dir / "best_model.pt").unlink(missing_ok=True)
        print(f"fresh run in {self.output_dir}: removed an earlier run's checkpoints (--resume continues one)")

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def _epoch_length(self, epoch: int) -> int:
        """Micro-batches of ``epoch`` (all of it): whole optimiser steps, cut to ``solver.iters_per_epoch`` if set."""
        self.loader.set_epoch(epoch)
        accum = self.cfg.solver.grad_accum_steps
        steps = len(self.loader) // accum
        if self.cfg.solver.iters_per_epoch is not None:
            steps = min(steps, self.cfg.solver.iters_per_epoch)
        if steps < 1:
            raise PKBatchError(
                f"epoch {epoch}: {len(self.loader)} P x K batches per rank make no optimiser step of "
                f"{accum} micro-batches (data.batch_size={self.cfg.data.batch_size} is the global batch); "
                "use more identities or a smaller data.batch_size"
            )
        return steps * accum

    def train_epoch(self, epoch: int) -> None:
        """Train one epoch (the rest of it after a mid-epoch checkpoint). A signal stops it at the next optimiser
        step boundary with a mid-epoch checkpoint (``epoch_step``) and :class:`TrainingInterrupted`; a signal in
        the epoch's last step is left to :meth:`_run_epochs`, after the epoch-end checkpoint."""
        cfg, engine = self.cfg, self.engine
        accum = cfg.solver.grad_accum_steps
        micro_batches = self._epoch_length(epoch)
        steps = micro_batches // accum
        done = self.start_step_in_epoch if epoch == self.start_epoch else 0
        if done == 0:
            self.scheduler.begin_epoch(epoch, steps)  # a mid-epoch resume restored the scheduler's epoch
        self.loader.set_epoch(epoch, done)
        engine.train()
        self.logger.start_epoch(epoch, cfg.solver.epochs, steps - done)
        checkpoints = StepCheckpoints(lambda epoch_step: self._save(epoch, epoch_step=epoch_step),
                                      cfg.train.checkpoint_every)
        names: list[str] | None = None
        sums: torch.Tensor | None = None
        count = 0
        tick = time.perf_counter()
        batches = iter(self.loader)
        for micro in range(done * accum, micro_batches):
            lr = self.scheduler.get_last_lr()[0]
            result = self.step_fn(next(batches))
            names = result.names
            sums = result.losses if sums is None else sums + result.losses
            count += 1
            if not result.boundary:
                continue
            self.step += 1
            self.guard.after_step(engine.skipped_steps, epoch, self.step)
            last = micro == micro_batches - 1
            logging_now = self.logger.should_log(self.step, last)
            if logging_now:
                record = self._log_record(names, sums, count, lr, time.perf_counter() - tick)
                self.guard.check_loss(record["loss/total"], epoch, self.step)
                self.logger.log(self.step, epoch, record)
                self.logger.advance(record["loss/total"], record["images_per_s"])
                sums, count, tick = None, 0, time.perf_counter()
            else:
                self.logger.advance()
            epoch_step = (micro + 1) // accum  # at an accumulation boundary here
            path = checkpoints.maybe_save(self.step, epoch_step, last)
            if self.stop.stops_here(self.env.world_size, last, sync_now=logging_now or path is not None):
                self.logger.end_epoch()
                self._stop_on_signal(epoch, path or checkpoints.save(epoch_step))
        self.logger.end_epoch()
        return None

    def _log_record(self, names: list[str], sums: torch.Tensor, count: int, lr: float, elapsed: float) -> dict:
        means = sums / count
        if self.env.world_size > 1:
            dist.all_reduce(means)
            means = means / self.env.world_size
        images = count * self.cfg.data.batch_size // self.cfg.solver.grad_accum_steps  # micro-steps x all ranks
        record = {"lr": lr, "images_per_s": images / max(elapsed, 1e-9)}
        record.update({f"loss/{name}": value for name, value in zip(names, means.tolist())})
        return record

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Retrieval metrics on query/gallery (percent); every rank gets them (rank 0 computes unless ZeRO-3)."""
        everyone = self.plan.zero_stage == 3  # partitioned weights: every rank must run the forward
        record: dict[str, float] = {}
        feature = ""
        if everyone or self.env.rank == 0:
            evaluation = RetrievalEval(self.cfg, self.dataset, self.eval_banks["query"], self.eval_banks["gallery"],
                                       self.loaders)
            metrics = evaluation.run(Embedder(self.module, self.env.device, self.dtype), progress=self.env.rank == 0)
            record, feature = metrics_record(metrics), metrics.feature
        if self.env.world_size > 1 and not everyone:
            shared = [record]
            dist.broadcast_object_list(shared, src=0)
            record = shared[0]
        self.logger.log(self.step, epoch, record)
        self.logger.message(
            f"epoch {epoch + 1} ({feature} feature): "
            + ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in record.items())
        )
        return record

    def run(self, stop_after_epochs: int | None = None) -> TrainResult:
        """Train the remaining epochs; the run folder's lock is released however this ends."""
        try:
            with self.stop:
                return self._run_epochs(stop_after_epochs)
        finally:
            if self.run_lock is not None:
                self.run_lock.release()

    def _run_epochs(self, stop_after_epochs: int | None) -> TrainResult:
        cfg = self.cfg
        best_path = self.output_dir / "best_model.pt"
        epochs_run = 0
        model_path = self.output_dir / "model.pt"
        if self.final_eval_pending:  # the run was stopped during its final evaluation
            self._final_evaluation(cfg.solver.epochs - 1, best_path)
        exported = False
        for epoch in range(self.start_epoch, cfg.solver.epochs):
            self.train_epoch(epoch)  # a signal inside it stops the run there, after a checkpoint
            epochs_run += 1
            final = epoch == cfg.solver.epochs - 1
            stopping = stop_after_epochs is not None and epochs_run >= stop_after_epochs
            if final:  # checkpoint and model.pt first: a failing final evaluation loses neither
                self._save(epoch, final_eval_pending=True)
                exported = bool(self._export(model_path))
                self._final_evaluation(epoch, best_path)
            elif self.evaluation.due(epoch, final):
                self._evaluate_and_keep_best(epoch, best_path)
            signalled = not final and self.stop.agreed(self.env.world_size, sync_now=True) is not None
            if not final:  # a checkpoint at every epoch end (the final one is written before its evaluation)
                path = self._save(epoch)
                if signalled:  # the signal came in the epoch's last step or its evaluation
                    self._stop_on_signal(epoch, path)
            if stopping:
                break
        if not exported:
            self._export(model_path)
        self.logger.close()
        return TrainResult(
            output_dir=self.output_dir,
            model_path=model_path,
            metrics_path=self.logger.metrics_path,
            best_model_path=best_path if best_path.exists() else None,
            final_metrics=dict(self.last_eval),
            best_metrics=dict(self.best_eval),
            epochs_done=self.start_epoch + epochs_run,
            steps=self.step,
        )

    def _evaluate_and_keep_best(self, epoch: int, best_path: Path) -> None:
        self.last_eval = self.evaluate(epoch)
        if self.last_eval["eval/mAP"] > self.best_map:
            self.best_map, self.best_eval = self.last_eval["eval/mAP"], dict(self.last_eval)
            self._export(best_path)

    def _final_evaluation(self, epoch: int, best_path: Path) -> None:
        """Evaluate after the final checkpoint and record that it was done, so a resume does not repeat it."""
        self._evaluate_and_keep_best(epoch, best_path)
        record_final_evaluation(self.checkpoint_dir, f"epoch_{epoch + 1:04d}", {
            "best_map": self.best_map, "best_eval": self.best_eval, "last_eval": self.last_eval})
        self.final_eval_pending = False

    def _save(self, epoch: int, epoch_step: int | None = None, final_eval_pending: bool = False) -> Path:
        """The one resumable checkpoint: at the end of ``epoch``, or after its first ``epoch_step`` optimiser
        steps (``train.checkpoint_every``, or a signal: both stop at an optimiser-step boundary)."""
        tag = f"epoch_{epoch + 1:04d}" if epoch_step is None else f"epoch_{epoch:04d}_step_{self.step:08d}"
        self.guard.has_checkpoint = True
        return save_checkpoint(self.engine, self.checkpoint_dir, tag, {
            "epoch": epoch, "epoch_step": epoch_step, "step": self.step, "best_map": self.best_map,
            "best_eval": self.best_eval, "last_eval": self.last_eval, "sampler": self.loader.state_dict(),
            "final_eval_pending": final_eval_pending, "early_loss": self.guard.early_loss,
        }, keep=self.cfg.train.keep_checkpoints)

    def _stop_on_signal(self, epoch: int, path: Path) -> None:
        """After the checkpoint ``path`` of the signalled step: say how to resume and stop."""
        self.logger.close()
        name = signal_name(self.stop.signum)
        raise TrainingInterrupted(
            f"{name}: stopped at epoch {epoch + 1}, step {self.step}; checkpoint {path}. Continue with: "
            f"fba train -c {self.output_dir / 'config.yaml'} --resume", self.stop.signum or 2
        )

    def _export(self, path: Path) -> Path:
        return export_model(self.module, path, self.cfg, self.num_classes, self.image_size, self.plan.zero_stage)


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "signal"


def metrics_record(metrics: RetrievalMetrics) -> dict[str, float]:
    """The evaluation record of docs/architecture.md: mAP, R1, R5, R10, mINP in percent."""
    return {f"eval/{name}": value for name, value in metrics.percent().items()}


def train(
    cfg: Config, resume: bool = False, stop_after_epochs: int | None = None, overwrite: bool = False
) -> TrainResult:
    """Train (or, with ``resume``, continue from the latest checkpoint in ``train.output_dir``).

    ``stop_after_epochs`` ends this call after that many epochs with a checkpoint written, as a killed or
    time-limited job would; a later ``train(cfg, resume=True)`` continues it. A fresh run into a folder holding
    another run's checkpoints is refused unless ``overwrite``.
    """
    return Trainer(cfg, resume, overwrite).run(stop_after_epochs)


def run(args: argparse.Namespace) -> int:
    if args.local_rank is not None:  # the `deepspeed` launcher passes --local_rank; torchrun sets LOCAL_RANK
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(args.config, args.overrides)
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (TrainingInterrupted, TrainingDiverged) as stopped:
        print(f"fba train: {stopped}", file=sys.stderr)
        return stopped.exit_code
    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    print(f"model: {result.model_path}\nmetrics log: {result.metrics_path}")
    if result.final_metrics:
        print(", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in result.final_metrics.items()))
    return 0
