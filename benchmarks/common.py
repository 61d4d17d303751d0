"""Helpers every benchmark shares: the device and commit a number came from, timing, the table, the JSON file.

Results layout
--------------
One JSON file per device, so that numbers from different machines never overwrite each other and the numbers of
one machine sit together::

    benchmarks/results/<device-slug>.json     e.g. cpu-amd-epyc.json, cuda-nvidia-h100-80gb-hbm3.json

The directory is ``benchmarks/results/`` of the repository, or ``$FBA_BENCH_RESULTS``, or the ``results_dir``
argument (in that order of precedence: argument, variable, default). The file is a JSON object with one top-level
key per benchmark (``"metrics"``, ``"cross_attention"``, ...); :func:`write_results` replaces its own key and
keeps the others. Each entry holds::

    {"device": ..., "device_kind": "cpu" | "cuda", "commit": ..., "dirty": bool, "timestamp": ...,
     "environment": {python, numpy, torch, cpu_count, ...}, "config": {...shapes, repeats...}, "rows": [...]}

``rows`` are flat dicts (one per measured case), the same rows :func:`format_table` prints.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from fba.utils.atomic import atomic_write_bytes
from fba.utils.precision import performance_flags

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULTS_ENV = "FBA_BENCH_RESULTS"


def cpu_name() -> str:
    """The CPU model as the OS reports it (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(kind: str = "cpu") -> str:
    """Human-readable name of the device a benchmark ran on: the CPU model, or the CUDA device's name."""
    if kind == "cpu":
        return cpu_name()
    if kind == "cuda":
        return torch.cuda.get_device_name()
    raise ValueError(f"device kind must be 'cpu' or 'cuda', got {kind!r}")


def device_slug(kind: str = "cpu", name: str | None = None) -> str:
    """File-name form of a device: ``cpu-amd-epyc``, ``cuda-nvidia-h100-80gb-hbm3``."""
    name = device_name(kind) if name is None else name
    words = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*$", " ", name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", words).strip("-")
    return f"{kind}-{slug or 'unknown'}"


def git_state() -> dict:
    """``{"commit": sha or "unknown", "dirty": bool}`` of the repository the benchmarks live in."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout

    try:
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain", "-uno").strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": False}


def environment() -> dict:
    """Versions, core count, CPU model and the CPU flags that change benchmark numbers (torch only when the
    benchmark imported it)."""
    import numpy

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "cpu": cpu_name(), "cpu_flags": performance_flags(),
                            "numpy": numpy.__version__}
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs of one call."""

    runs: list[float]

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def to_dict(self) -> dict:
        return {"best_s": self.best, "median_s": self.median, **asdict(self)}


def synchronize(device: Any) -> None:
    """Wait for the device's queued work, so a timer read after it measures the work (no-op off CUDA)."""
    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1, device: Any = None) -> tuple[Timing, Any]:
    """Time ``fn()`` ``repeat`` times after ``warmup`` untimed calls; returns the timing and the last result.

    With a CUDA ``device`` each run is synchronised before its clock starts and before it stops, so a run's time
    is the device work it queued (its latency); :func:`time_loop` measures throughput instead.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    runs = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        runs.append(time.perf_counter() - start)
    return Timing(runs), result


def time_loop(fn: Callable[[], Any], iters: int, warmup: int = 1, device: Any = None) -> float:
    """Seconds per call of ``fn()`` run ``iters`` times back to back after ``warmup`` untimed calls, with one
    synchronisation before the clock starts and one before it stops (the device pipelines the calls, as a
    training or embedding loop does)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def _cell(value: Any, float_format: str) -> str:
    if isinstance(value, float):
        return format(value, float_format)
    return str(value)


def format_table(rows: Sequence[dict], columns: Iterable[str] | None = None, float_format: str = ".4g") -> str:
    """A plain-text table of ``rows`` (dicts); columns default to the keys of the first row, in order."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])
    cells = [[_cell(row.get(column, ""), float_format) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    header = " | ".join(column.ljust(width) for column, width in zip(columns, widths))
    rule = "-+-".join("-" * width for width in widths)
    body = [" | ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    return "\n".join([header, rule, *body])


def benchmark_parser(doc: str | None, smoke_help: str, device_options: bool = False) -> argparse.ArgumentParser:
    """The options every benchmark takes (``--smoke``, ``--results-dir``; with ``device_options`` also
    ``--device`` and ``--append`` for the GPU benchmarks that are run in parts), so they read the same."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--results-dir", default=None,
                        help=f"where <device>.json goes (default benchmarks/results, or ${RESULTS_ENV})")
    if device_options:
        parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
        parser.add_argument("--append", action="store_true",
                            help="keep the rows of other variants already in this device's entry (runs split in parts)")
    return parser


def results_dir(override: str | os.PathLike | None = None) -> Path:
    """Where results go: the argument, else ``$FBA_BENCH_RESULTS``, else ``benchmarks/results``."""
    if override is not None:
        return Path(override)
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    return DEFAULT_RESULTS_DIR


def earlier_rows(key: str, kind: str, directory: str | None, replaced: list[str]) -> list[dict]:
    """For ``--append``: the rows stored under ``key`` for this device, less those of the variants about to be
    measured again."""
    path = results_dir(directory) / f"{device_slug(kind)}.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text()).get(key, {}).get("rows", [])
    return [row for row in rows if row.get("variant") not in replaced]


def record_rows(
    key: str,
    groups: Iterable[list[dict]],
    *,
    kind: str,
    config: dict,
    directory: str | os.PathLike | None,
    append: bool,
    replaced: Sequence[str] = (),
    show: Callable[[list[dict]], str] | None = None,
) -> tuple[list[dict], Path]:
    """The results loop of every benchmark driver: with ``append`` the rows an earlier run stored under ``key``
    (less the variants in ``replaced``, measured again), then each group of rows written as it arrives, so a run
    cut short keeps what it measured, and shown by ``show`` (default: a table)."""
    rows = earlier_rows(key, kind, directory, list(replaced)) if append else []
    path = None
    for group in groups:
        rows.extend(group)
        path = write_results(key, rows, kind=kind, config=config, directory=directory)
        shown = (show or format_table)(group)
        if shown:
            print(shown, flush=True)
    if path is None:
        path = write_results(key, rows, kind=kind, config=config, directory=directory)
    return rows, path


def write_results(
    benchmark: str,
    rows: Sequence[dict],
    *,
    kind: str = "cpu",
    config: dict | None = None,
    directory: str | os.PathLike | None = None,
) -> Path:
    """Store ``rows`` under the key ``benchmark`` of this device's results file, keeping other benchmarks' keys.

    The file is rewritten atomically (:mod:`fba.utils.atomic`); an unreadable existing file is an error
    (it is never silently overwritten).
    """
    path = results_dir(directory) / f"{device_slug(kind)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: existing results file is not valid JSON ({error}); fix or remove it") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path}: existing results file must hold a JSON object, got {type(data).__name__}")
    data[benchmark] = {
        "device": device_name(kind),
        "device_kind": kind,
        **git_state(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "config": config or {},
        "rows": list(rows),
    }
    return atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())

# ---- shared by the benchmarks: model builders, shapes, captions, peaks, memory, marks ----------------------

WORDS = ("a man woman person wearing red blue black white grey green jacket shirt dress jeans trousers backpack bag "
         "hat shoes carrying holding walking standing near car bus tree bench door window street crowd bicycle sign "
         "behind front left right partly covering the with and of in on").split()


def synthetic_captions(count: int, seed: int = 0, min_words: int = 4, max_words: int = 45) -> list[str]:
    """Captions of varied length (a few words up to past the 77-token context), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_words, max_words + 1, (count,), generator=gen).tolist()
    picks = torch.randint(0, len(WORDS), (sum(lengths),), generator=gen).tolist()
    captions, start = [], 0
    for length in lengths:
        captions.append(" ".join(WORDS[i] for i in picks[start:start + length]))
        start += length
    return captions


def build_bench_model(shape: Any, kernel: str, device: torch.device) -> tuple[Any, torch.nn.Module]:
    """The full FBA of ``shape`` (any object with arch, stride, height, width, num_classes) with random weights:
    no checkpoint is read, speed does not depend on the values."""
    from fba.config import ModelConfig
    from fba.model import build_model

    cfg = ModelConfig(arch=shape.arch, stride=shape.stride, kernel=kernel)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "model.pretrained is not set"
        model = build_model(cfg, shape.num_classes, (shape.height, shape.width))
    return cfg, model.to(device)


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """Fused kernels exist for CUDA tensors only: on the CPU every variant runs the reference path."""
    return kernel if device.type == "cuda" else "reference"


class Marks:
    """Labelled time points; a label names the section that *ends* at it. CUDA events on a GPU, else perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.points: list[tuple[str, object]] = []

    def mark(self, label: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.points.append((label, event))
        else:
            self.points.append((label, time.perf_counter()))

    def clear(self) -> None:
        self.points.clear()

    def _ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else 1e3 * (end - start)

    def steps(self) -> list[dict[str, float]]:
        """Milliseconds per section label for each step (a step begins at a ``start`` mark)."""
        if self.cuda:
            torch.cuda.synchronize()
        steps: list[dict[str, float]] = []
        previous = None
        for label, point in self.points:
            if label == "start":
                steps.append({})
            elif previous is not None and steps:
                steps[-1][label] = steps[-1].get(label, 0.0) + self._ms(previous, point)
            previous = point
        return steps


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int | None = None,
                       repeat: int = 20) -> float:
    """The dense ``dtype`` matmul rate this device reaches in practice with the threads it has now (TFLOP/s): the
    denominator of a fair MFU."""
    size = size or (8192 if device.type == "cuda" else 512)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / time_loop(lambda: a @ b, repeat, warmup=3, device=device) / 1e12


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class EmbedShape:
    arch: str
    height: int
    width: int
    stride: int
    batches: tuple[int, ...]
    latency_iters: int  # timed calls at the latency batches (1 and 32): enough for a p99
    throughput_iters: int  # timed calls at the largest batch
    warmup: int
    num_classes: int = 751


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by the nearest rank (p50, p99 of timed calls)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
