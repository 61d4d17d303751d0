"""The measured cases of ``bench_metrics`` part 2: features with identity structure, made block by block from a
seeded generator and written once to a features file (``fba.retrieval.features_file``), then scored by the command a
user runs, ``fba eval --features FILE``, in a fresh process (:mod:`benchmarks.command_usage`), with its time and
peak RSS; and the check of the bounded re-ranking against the in-memory one, in a subprocess of its own
(``python -m benchmarks.retrieval_scale CASE PROBLEM [DATA_DIR]``: one JSON line).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FeatureProblem:
    """Query/gallery sizes, test ids and cameras, shares of distractor and junk images in the first
    ``num_gallery`` gallery rows, then ``extra_distractors`` more distractor rows; feature dimension."""

    num_query: int
    num_gallery: int
    num_ids: int
    num_cams: int
    distractor_share: float = 0.0
    junk_share: float = 0.0
    extra_distractors: int = 0
    dim: int = 768
    noise: float = 2.3  # per-image noise against the unit id centre: same-id cosine ~ 1 / (1 + noise^2) = 0.16,
    # 4.4 standard deviations of a random pair's (1 / sqrt(768)): a few of 500k distractors outrank a match

    @property
    def gallery_rows(self) -> int:
        return self.num_gallery + self.extra_distractors


FEATURE_PROBLEMS = {
    "market": FeatureProblem(3368, 15913, 750, 6, distractor_share=0.176, junk_share=0.240),
    "rerank-mid": FeatureProblem(1000, 5000, 300, 6, distractor_share=0.1, junk_share=0.1),
    "smoke": FeatureProblem(40, 300, 15, 4, distractor_share=0.1, junk_share=0.1, dim=32),
    "smoke-distractors": FeatureProblem(40, 300, 15, 4, distractor_share=0.1, junk_share=0.1, extra_distractors=700,
                                       dim=32),
    "market+500k": FeatureProblem(3368, 15913, 750, 6, distractor_share=0.176, junk_share=0.240,
                                  extra_distractors=500_000),
    "msmt17": FeatureProblem(11659, 82161, 3060, 15),
    "msmt17-subset": FeatureProblem(1200, 6000, 250, 15),
}
CHUNK = 4096
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "bench"
# case: the ``fba eval --features`` options it measures
COMMAND_CASES = {
    "eval-memory": ["--streaming", "off"], "eval-stream": ["--streaming", "on"],
    "rerank-memory": ["--rerank", "--streaming", "off"], "rerank-bounded": ["--rerank", "--streaming", "on"],
}


def make_ids(problem: FeatureProblem, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, problem.num_ids + 1, problem.num_query)
    q_camids = rng.integers(0, problem.num_cams, problem.num_query)
    g_pids = rng.integers(1, problem.num_ids + 1, problem.num_gallery)
    kind = rng.random(problem.num_gallery)
    g_pids[kind < problem.distractor_share] = 0
    g_pids[(kind >= problem.distractor_share) & (kind < problem.distractor_share + problem.junk_share)] = -1
    g_pids = np.concatenate([g_pids, np.zeros(problem.extra_distractors, dtype=g_pids.dtype)])
    g_camids = rng.integers(0, problem.num_cams, problem.gallery_rows)
    return q_pids, g_pids, q_camids, g_camids


class SeededRows:
    """Feature rows made on demand, ``CHUNK`` rows per seeded generator: the same rows whatever the slices asked,
    and a gallery of any length that is never held (``shape`` and ``[a:b]`` are all the streaming path reads).
    Row r is its id's centre (none for distractors and junk) plus noise, unit length."""

    def __init__(self, pids: np.ndarray, centres: np.ndarray, noise: float, seed: int):
        self.pids, self.centres, self.noise, self.seed = pids, centres, noise, seed
        self.shape = (len(pids), centres.shape[1])

    def _chunk(self, c: int) -> np.ndarray:
        start, stop = c * CHUNK, min((c + 1) * CHUNK, self.shape[0])
        rng = np.random.default_rng([self.seed, c])
        rows = rng.standard_normal((stop - start, self.shape[1]), dtype=np.float32)
        rows *= np.float32(self.noise / np.sqrt(self.shape[1]))
        pids = self.pids[start:stop]
        rows[pids > 0] += self.centres[pids[pids > 0] - 1]
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        pieces = [self._chunk(c) for c in range(start // CHUNK, (stop - 1) // CHUNK + 1)] if stop > start else []
        if not pieces:
            return np.empty((0, self.shape[1]), dtype=np.float32)
        block = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        offset = (start // CHUNK) * CHUNK
        return block[start - offset:stop - offset]


def make_features(problem: FeatureProblem, seed: int = 0, materialise: bool = True):
    """``(qf, gf, ids)``; ``gf`` a :class:`SeededRows` (or, ``materialise``, its rows as one array)."""
    ids = make_ids(problem, seed)
    rng = np.random.default_rng(seed + 1)
    centres = (rng.standard_normal((problem.num_ids, problem.dim)) / np.sqrt(problem.dim)).astype(np.float32)
    qf = SeededRows(ids[0], centres, problem.noise, seed + 2)[0:problem.num_query]
    gf = SeededRows(ids[1], centres, problem.noise, seed + 3)
    return qf, (gf[0:gf.shape[0]] if materialise else gf), ids


def features_file(problem_name: str, data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    """The problem's features file (query rows, then gallery rows), written on first use, block by block."""
    path = Path(data_dir) / f"{problem_name}.safetensors"
    if not path.exists():
        from fba.retrieval.features_file import save_features

        problem = FEATURE_PROBLEMS[problem_name]
        qf, gf, (q_pids, g_pids, q_camids, g_camids) = make_features(problem)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_features(path, np.concatenate([qf, gf]), [f"{i}.jpg" for i in range(len(qf) + len(gf))],
                      np.concatenate([q_pids, g_pids]), np.concatenate([q_camids, g_camids]),
                      ["query"] * len(qf) + ["gallery"] * len(gf), {"feature": "synthetic", "problem": problem_name})
    return path


def _subprocess(args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def run_command_case(case: str, problem_name: str, data_dir: Path = DEFAULT_DATA_DIR, isolated: bool = True) -> dict:
    """``fba eval --features FILE`` with the case's options: in a fresh interpreter (``isolated``; the file is
    written by another one first) or in this one (smoke tests)."""
    from benchmarks import command_usage

    problem = FEATURE_PROBLEMS[problem_name]
    data_dir = Path(data_dir)
    if isolated:
        _subprocess(["-m", "benchmarks.retrieval_scale", "write", problem_name, str(data_dir)])
    path = features_file(problem_name, data_dir)
    out = data_dir / f"{problem_name}.{case}.json"
    argv = ["eval", "--features", str(path), *COMMAND_CASES[case], "--json", str(out)]
    usage = (json.loads(_subprocess(["-m", "benchmarks.command_usage", *argv]).strip().splitlines()[-1]) if isolated
             else command_usage.measure(argv))
    metrics = json.loads(out.read_text())
    return {"case": case, "problem": problem_name, "queries": problem.num_query, "gallery": problem.gallery_rows,
            "dim": problem.dim, "file_mb": path.stat().st_size / 2**20, "seconds": usage["seconds"],
            "cpu_seconds": usage["cpu_seconds"], "peak_rss_mb": usage["peak_rss_mb"],
            "rss_over_file_mb": usage["peak_rss_mb"] - path.stat().st_size / 2**20, "streamed": metrics["streaming"],
            **_summary(metrics)}


def _summary(metrics: dict) -> dict:
    return {"mAP": float(metrics["mAP"]), "R1": float(metrics["cmc"][0]), "mINP": float(metrics["mINP"]),
            "valid_queries": int(metrics["num_valid_queries"])}


def run_rerank_check(problem_name: str, device: str = "cpu") -> dict:
    """The bounded re-ranking's distance matrix against the in-memory ``re_rank`` on the same features."""
    import torch

    from benchmarks.command_usage import cpu_seconds, peak_rss_mb
    from fba.retrieval.metrics import evaluate, pairwise_distance, re_rank
    from fba.retrieval import RerankedDistances

    problem = FEATURE_PROBLEMS[problem_name]
    qf, gf, ids = make_features(problem)
    if device != "cpu":
        qf, gf = torch.from_numpy(qf).to(device), torch.from_numpy(gf).to(device)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    expected = re_rank(pairwise_distance(qf, gf, "cosine"), pairwise_distance(qf, qf, "cosine"),
                       pairwise_distance(gf, gf, "cosine"))
    got = RerankedDistances(qf, gf, metric="cosine", progress=False).matrix()
    reference, metrics = evaluate(expected, *ids), evaluate(got, *ids)
    return {"case": "rerank-check", "problem": problem_name, "queries": problem.num_query,
            "gallery": problem.gallery_rows, "dim": problem.dim, "device": device,
            "seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu_start,
            "peak_rss_mb": peak_rss_mb(), "max_abs_diff": float(np.abs(got - expected).max()),
            "mAP_diff": abs(metrics["mAP"] - reference["mAP"]), **_summary(metrics)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"]:
        print(features_file(argv[1], Path(argv[2])))
    elif argv[:1] == ["rerank-check"]:
        print(json.dumps(run_rerank_check(*argv[1:3])))
    else:
        raise SystemExit(f"usage: write PROBLEM DATA_DIR | rerank-check PROBLEM [DEVICE]; got {argv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


__all__ = ["COMMAND_CASES", "FEATURE_PROBLEMS", "FeatureProblem", "SeededRows", "asdict", "features_file",
           "make_features", "run_command_case", "run_rerank_check"]
