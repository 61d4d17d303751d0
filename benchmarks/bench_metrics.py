"""Evaluation at the size of the real test sets: the ranking (NumPy vs C++), and in-memory vs streaming
evaluation and re-ranking from features, with peak memory.

Part 1 (key ``metrics``): ``fba.retrieval.metrics.evaluate`` on Market-1501 / DukeMTMC-reID sized distance matrices, NumPy vs
C++. Distances are random, but the ids and cameras have the real structure: every query id has several gallery
images on several cameras (some on the query's own camera, which the protocol drops), plus distractors (id 0) and
junk (id -1) in Market's proportions; true matches are drawn a little closer so the metrics are not trivial.

Part 2 (key ``metrics-scale``): the command a user runs, ``fba eval --features FILE``, on a features file of 768-d
features whose images of one id lie around a shared centre, in memory (``--streaming off``) against streamed
(``--streaming on``), with and without ``--rerank``; each case is a fresh interpreter (its imports included), whose
peak RSS is its own (``VmHWM``: :mod:`benchmarks.command_usage`); ``rss_over_file_mb`` is what it holds beyond the
file's size. ``--large`` (key ``metrics-large``) runs the targets of docs/retrieval.md: Market-1501's queries
against its gallery plus 500,000 distractors (a 1.5 GiB file), and MSMT17-size re-ranking + evaluation, with the
check of the bounded re-ranking against the in-memory one on a subset. Files are written once under ``--data-dir``.

    python -m benchmarks.bench_metrics [--smoke] [--large] [--data-dir DIR] [--results-dir DIR]
    pytest benchmarks/bench_metrics.py                                             # pytest-benchmark (part 1)
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pytest

from benchmarks.common import (
    REPO_ROOT, benchmark_parser, device_slug, format_table, measure, results_dir, write_results,
)
from fba.retrieval.metrics import cpp_available, evaluate


@dataclass(frozen=True)
class Problem:
    """Shape of one evaluation: query/gallery counts, test ids, cameras, share of distractor and junk images."""

    num_query: int
    num_gallery: int
    num_ids: int
    num_cams: int
    distractor_share: float
    junk_share: float


PROBLEMS = {
    "market": Problem(3368, 15913, 750, 6, distractor_share=0.176, junk_share=0.240),
    "duke": Problem(2228, 17661, 1110, 8, distractor_share=0.0, junk_share=0.0),
}
SMOKE_PROBLEMS = {"smoke": Problem(60, 400, 20, 4, distractor_share=0.1, junk_share=0.1)}
BENCHMARK_KEY = "metrics"


def make_inputs(problem: Problem, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(distmat float32 [Q, G], q_pids, g_pids, q_camids, g_camids)`` with the structure described above."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, problem.num_ids + 1, problem.num_query)
    q_camids = rng.integers(0, problem.num_cams, problem.num_query)
    g_pids = rng.integers(1, problem.num_ids + 1, problem.num_gallery)
    g_camids = rng.integers(0, problem.num_cams, problem.num_gallery)
    kind = rng.random(problem.num_gallery)
    g_pids[kind < problem.distractor_share] = 0
    g_pids[(kind >= problem.distractor_share) & (kind < problem.distractor_share + problem.junk_share)] = -1
    distmat = rng.random((problem.num_query, problem.num_gallery), dtype=np.float32)
    distmat -= np.float32(0.3) * (q_pids[:, None] == g_pids[None, :])
    return distmat, q_pids, g_pids, q_camids, g_camids


def backends() -> list[str]:
    return ["numpy", "cpp"] if cpp_available() else ["numpy"]


def run_benchmark(problems: dict[str, Problem], repeat: int = 3) -> list[dict]:
    """One row per (problem, backend): best/median seconds and the metrics, checked equal across backends."""
    rows = []
    for name, problem in problems.items():
        inputs = make_inputs(problem)
        reference = None
        for backend in backends():
            runs = 1 if backend == "numpy" and problem.num_query > 1000 else repeat
            timing, result = measure(lambda: evaluate(*inputs, backend=backend), repeat=runs,
                                     warmup=0 if backend == "numpy" else 1)
            if reference is None:
                reference = result
            elif abs(result.mAP - reference.mAP) > 1e-9 or abs(result.mINP - reference.mINP) > 1e-9:
                raise AssertionError(f"{name}: {backend} disagrees with numpy: {result} vs {reference}")
            rows.append({
                "problem": name, "queries": problem.num_query, "gallery": problem.num_gallery, "backend": backend,
                "best_s": timing.best, "median_s": timing.median, "runs": len(timing.runs),
                "mAP": result.mAP, "R1": float(result.cmc[0]), "mINP": result.mINP,
                "valid_queries": result.num_valid_queries,
            })
        numpy_best = next(row["best_s"] for row in rows if row["problem"] == name and row["backend"] == "numpy")
        for row in rows:
            if row["problem"] == name:
                row["speedup_vs_numpy"] = numpy_best / row["best_s"]
    return rows


# Part 2: (case, problem) side by side; each pair of rows is the in-memory path and its streaming twin.
SCALE_CASES = [
    ("eval-memory", "market"), ("eval-stream", "market"), ("rerank-memory", "rerank-mid"),
    ("rerank-bounded", "rerank-mid"), ("rerank-memory", "market"), ("rerank-bounded", "market"),
]
SMOKE_SCALE_CASES = [
    ("eval-memory", "smoke"), ("eval-stream", "smoke"), ("eval-stream", "smoke-distractors"),
    ("rerank-memory", "smoke"), ("rerank-bounded", "smoke"), ("rerank-check", "smoke"),
]
LARGE_CASES = [("eval-stream", "market+500k"), ("rerank-check", "msmt17-subset"), ("rerank-bounded", "msmt17")]
SCALE_COLUMNS = ["case", "problem", "queries", "gallery", "file_mb", "seconds", "cpu_seconds", "peak_rss_mb",
                 "rss_over_file_mb", "mAP", "R1", "mINP", "max_abs_diff"]


def run_scale(cases: list[tuple[str, str]], device: str, data_dir: str, isolated: bool = True,
              save: Callable[[list[dict]], object] = lambda rows: None) -> list[dict]:
    """One row per case, each in a fresh interpreter (``isolated``) so its peak RSS is its own; ``save`` is
    called with the rows so far after each case, so a run cut short keeps what it measured."""
    from benchmarks import retrieval_scale

    rows = []
    for case, problem in cases:
        if case != "rerank-check":
            rows.append(retrieval_scale.run_command_case(case, problem, data_dir, isolated))
        elif isolated:
            command = [sys.executable, "-m", "benchmarks.retrieval_scale", case, problem, device]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
            done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{case} {problem} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            rows.append(retrieval_scale.run_rerank_check(problem, device))
        print(format_table(rows[-1:], [c for c in SCALE_COLUMNS if c in rows[-1]]), flush=True)
        save(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "tiny sizes (seconds); stored under 'metrics-smoke' and 'metrics-scale-smoke'")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of the C++ path (NumPy runs once at full size)")
    parser.add_argument("--large", action="store_true",
                        help="only the two targets: Market + 500k distractors, MSMT17-size re-ranking (minutes)")
    parser.add_argument("--device", default="cpu", help="where the re-ranking check computes: cpu or cuda")
    parser.add_argument("--data-dir", default=None, help="where the features files are written once (default data/bench)")
    parser.add_argument("--cases", nargs="+", metavar="CASE:PROBLEM",
                        help="only these part-2 cases (e.g. eval-stream:market+500k)")
    parser.add_argument("--append", action="store_true",
                        help="keep the stored part-2 rows of the cases not run now (a --large run split in parts)")
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    if not args.large:
        problems = SMOKE_PROBLEMS if args.smoke else PROBLEMS
        rows = run_benchmark(problems, repeat=args.repeat)
        print(format_table(rows, ["problem", "queries", "gallery", "backend", "best_s", "median_s", "runs",
                                  "speedup_vs_numpy", "mAP", "R1", "mINP", "valid_queries"]))
        config = {"problems": {name: asdict(p) for name, p in problems.items()}, "distmat_dtype": "float32",
                  "threads": 1, "seed": 0}
        key = f"{BENCHMARK_KEY}-smoke" if args.smoke else BENCHMARK_KEY
        path = write_results(key, rows, kind="cpu", config=config, directory=args.results_dir)
        print(f"results written to {path} (key {key!r})")
    from benchmarks.retrieval_scale import DEFAULT_DATA_DIR, FEATURE_PROBLEMS

    cases = LARGE_CASES if args.large else SMOKE_SCALE_CASES if args.smoke else SCALE_CASES
    if args.cases:
        wanted = [tuple(name.split(":")) for name in args.cases]
        unknown = [":".join(case) for case in wanted if case not in cases]
        if unknown:
            parser.error(f"unknown cases {unknown}; this mode has {[':'.join(c) for c in cases]}")
        cases = wanted
    key = "metrics-large" if args.large else "metrics-scale-smoke" if args.smoke else "metrics-scale"
    data_dir = args.data_dir or (args.results_dir and f"{args.results_dir}/data") or DEFAULT_DATA_DIR
    config = {"problems": {name: asdict(FEATURE_PROBLEMS[name]) for name in sorted({p for _, p in cases})},
              "metric": "cosine", "isolated_processes": not args.smoke, "torch_threads": _torch_threads(),
              "rerank": {"k1": 20, "k2": 6, "lambda": 0.3}, "gallery_block": 4096,
              "command": "fba eval --features FILE [--rerank] --streaming on|off"}

    def save(rows: list[dict]):
        return write_results(key, [*_stored_rows(key, kind, args.results_dir, cases), *rows] if args.append else rows,
                             kind=kind, config=config, directory=args.results_dir)

    rows = run_scale(cases, args.device, data_dir, isolated=not args.smoke, save=save)
    print(format_table(rows, [c for c in SCALE_COLUMNS if any(c in row for row in rows)]))
    print(f"results written to {save(rows)} (key {key!r})")
    return 0


def _stored_rows(key: str, kind: str, directory: str | None, replaced: list[tuple[str, str]]) -> list[dict]:
    """The rows already stored under ``key`` for this device, less those of the cases about to be measured."""
    path = results_dir(directory) / f"{device_slug(kind)}.json"
    rows = json.loads(path.read_text()).get(key, {}).get("rows", []) if path.exists() else []
    return [row for row in rows if (row["case"], row["problem"]) not in replaced]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@functools.lru_cache(maxsize=1)
def _cached_inputs(name: str) -> tuple[np.ndarray, ...]:
    return make_inputs(PROBLEMS[name])


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_evaluate(benchmark, name, backend):
    if backend == "cpp" and not cpp_available():
        pytest.skip("fba._C is not built")
    inputs = _cached_inputs(name)
    rounds = 1 if backend == "numpy" else 5
    result = benchmark.pedantic(evaluate, args=inputs, kwargs={"backend": backend}, rounds=rounds, iterations=1)
    assert result.num_valid_queries > 0.9 * PROBLEMS[name].num_query


if __name__ == "__main__":
    raise SystemExit(main())
