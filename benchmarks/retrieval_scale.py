"""The measured cases of ``bench_metrics`` part 2: features with identity structure, made in memory or block by
block from a seeded generator, and one function per (path, problem) that runs in a subprocess of its own and
reports its time and peak RSS (``python -m benchmarks.retrieval_scale CASE PROBLEM [PRECISION]``: one JSON line).
"""
from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass

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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine, the work done, whatever the wait."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(metrics: dict) -> dict:
    return {"mAP": float(metrics["mAP"]), "R1": float(metrics["cmc"][0]), "mINP": float(metrics["mINP"]),
            "valid_queries": int(metrics["num_valid_queries"])}


def run_case(case: str, problem_name: str, precision: str = "float64", device: str = "cpu") -> dict:
    """One measurement: ``case`` in eval-memory, eval-stream, rerank-memory, rerank-bounded, rerank-check."""
    import torch

    from fba.metrics import evaluate, pairwise_distance, re_rank
    from fba.streaming import RerankedDistances, evaluate_blocks, evaluate_streaming

    torch.set_num_threads(torch.get_num_threads())
    problem = FEATURE_PROBLEMS[problem_name]
    streamed_gallery = case == "eval-stream" and problem.extra_distractors > 0
    qf, gf, ids = make_features(problem, materialise=not streamed_gallery)
    if device != "cpu":
        qf = torch.from_numpy(qf).to(device)
        gf = gf if streamed_gallery else torch.from_numpy(gf).to(device)
        torch.cuda.reset_peak_memory_stats()
    baseline = peak_rss_mb()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    extra: dict = {}
    if case == "eval-memory":
        metrics = evaluate(pairwise_distance(qf, gf, metric="cosine"), *ids)
    elif case == "eval-stream":
        metrics = evaluate_streaming(qf, gf, *ids, metric="cosine", precision=precision, progress=False)
    elif case == "rerank-memory":
        distmat = re_rank(pairwise_distance(qf, gf, "cosine"), pairwise_distance(qf, qf, "cosine"),
                          pairwise_distance(gf, gf, "cosine"))
        metrics = evaluate(distmat, *ids)
    elif case == "rerank-bounded":
        source = RerankedDistances(qf, gf, metric="cosine", precision=precision, progress=False)
        metrics = evaluate_blocks(source, *ids, query_block=128, progress=False)
        extra["recomputed_rows"] = source.recomputed_rows
    elif case == "rerank-check":
        expected = re_rank(pairwise_distance(qf, gf, "cosine"), pairwise_distance(qf, qf, "cosine"),
                           pairwise_distance(gf, gf, "cosine"))
        got = RerankedDistances(qf, gf, metric="cosine", precision=precision, progress=False).matrix()
        reference, metrics = evaluate(expected, *ids), evaluate(got, *ids)
        extra = {"max_abs_diff": float(np.abs(got - expected).max()),
                 "mAP_diff": abs(metrics["mAP"] - reference["mAP"])}
    else:
        raise ValueError(f"unknown case {case!r}")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    row = {"case": case, "problem": problem_name, "queries": problem.num_query, "gallery": problem.gallery_rows,
           "dim": problem.dim, "precision": precision if case in ("eval-stream", "rerank-bounded", "rerank-check")
           else "float64", "device": device, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb(),
           "baseline_rss_mb": baseline, **_summary(metrics), **extra}
    if device != "cpu":
        row["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main(argv: list[str]) -> int:
    print(json.dumps(run_case(*argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


__all__ = ["FEATURE_PROBLEMS", "FeatureProblem", "SeededRows", "asdict", "make_features", "run_case"]
