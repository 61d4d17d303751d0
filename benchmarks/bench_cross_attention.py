"""Time of the shared cross-attention at the paper's sizes: reference (maps materialised), SDPA (no capture),
Triton fused and CUDA fused, forward and forward+backward.

Two ops: ``img2txt`` is the image->caption attention of both branches with the column stats (the op the fused
kernels replace; SDPA does it without the stats, the floor of what PyTorch offers), and ``all4`` is
``fba.kernels.cross_modal_attention`` with all four attentions (the caption->image ones are SDPA in every row).

    python -m benchmarks.bench_cross_attention [--smoke] [--results-dir DIR]   # table + results/<device>.json
    pytest benchmarks/bench_cross_attention.py                                   # pytest-benchmark (GPU)

On a GPU times come from ``triton.testing.do_bench`` (median, p20, p80), GB/s counts the fewest bytes the op must
move (each input read once, each output written once) against the measured device copy bandwidth, and peak memory
is what the call allocates on top of its inputs. ``--smoke`` runs tiny shapes on the CPU (reference and the Triton
interpreter) so the test suite can check the table and the JSON.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import benchmark_parser, format_table, measure, write_results

BENCHMARK_KEY = "cross_attention"


@dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    nq: int
    m: int
    dim: int
    dtype: str


PAPER = Shape(64, 12, 311, 77, 64, "bfloat16")
SMOKE = Shape(2, 2, 13, 7, 16, "float32")


def make_inputs(shape: Shape, device: str, seed: int = 0) -> dict:
    """Random image q/k/v [B,H,N,d], caption q/k/v [2B,H,M,d] (fg block first) and key masks [2B,M] (10-77 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, shape.dtype)
    b, h, n, m, d = shape.batch, shape.heads, shape.nq, shape.m, shape.dim

    def rand(*size):
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype).requires_grad_()

    lengths = torch.randint(min(10, m), m + 1, (2 * b,), generator=gen)
    valid = (torch.arange(m)[None, :] < lengths[:, None]).to(device)
    return {"img": [rand(b, h, n, d) for _ in range(3)], "txt": [rand(2 * b, h, m, d) for _ in range(3)],
            "valid": valid}


def img2txt(inputs: dict, impl: str):
    """The image->caption attention of both branches; every impl but sdpa also returns the stats."""
    q = inputs["img"][0]
    _, k, v = inputs["txt"]
    valid = inputs["valid"]
    b = q.shape[0]
    if impl == "sdpa":
        mask = valid[:, None, None, :]
        return (F.scaled_dot_product_attention(q, k[:b], v[:b], attn_mask=mask[:b]),
                F.scaled_dot_product_attention(q, k[b:], v[b:], attn_mask=mask[b:]))
    from fba import kernels

    return kernels.cross_attention_with_stats(q, k[:b], v[:b], k[b:], v[b:], valid[:b], valid[b:], backend=impl)


def all4(inputs: dict, impl: str):
    from fba import kernels

    backend = "reference" if impl == "sdpa" else impl
    out = kernels.cross_modal_attention(*inputs["img"], *inputs["txt"], inputs["valid"], need_stats=impl != "sdpa",
                                        backend=backend)
    return out.img, out.txt


OPS = {"img2txt": img2txt, "all4": all4}


def min_bytes(shape: Shape, op: str, mode: str) -> int:
    """Fewest bytes the op must move: each input read once, each output (and gradient) written once."""
    item = torch.finfo(getattr(torch, shape.dtype)).bits // 8
    b, h, n, m, d = shape.batch, shape.heads, shape.nq, shape.m, shape.dim
    img, txt = b * h * n * d * item, b * h * m * d * item  # one image tensor, one branch's caption tensor
    stats = b * 3 * m * 4
    if op == "img2txt":
        fwd = img + 4 * txt + 2 * img + stats  # q, k/v of both branches; o_f, o_b; stats
        bwd = img + 4 * txt + 2 * img + img + 4 * txt  # read q, k, v, do_f, do_b; write dq, dk, dv
    else:
        fwd = 3 * img + 6 * txt + 2 * img + 2 * txt + stats  # all q/k/v; image and caption outputs; stats
        bwd = 3 * img + 6 * txt + 2 * img + 2 * txt + 3 * img + 6 * txt
    return fwd if mode == "fwd" else fwd + bwd


def step(inputs: dict, op: str, impl: str, mode: str):
    """One call to time: the forward, or forward plus backward of a fixed random cotangent."""
    leaves = inputs["img"] + inputs["txt"]
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return OPS[op](inputs, impl)
        return run
    cotangents = [torch.randn_like(o) for o in OPS[op](inputs, impl)[:2]]

    def run():
        outs = OPS[op](inputs, impl)[:2]
        torch.autograd.backward(outs, cotangents)
        for t in leaves:
            t.grad = None
    return run


def copy_bandwidth() -> float:
    """Device-to-device copy GB/s (bytes read + written) on 1 GiB, the memory ceiling the fused kernels aim at."""
    import triton.testing

    src = torch.empty(2 ** 28, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def peak_extra_mib(run) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def time_gpu(run) -> dict:
    import triton.testing

    med, p20, p80 = triton.testing.do_bench(run, warmup=50, rep=300, quantiles=[0.5, 0.2, 0.8])
    return {"ms": med, "p20_ms": p20, "p80_ms": p80}


def time_cpu(run, repeat: int) -> dict:
    timing, _ = measure(run, repeat=repeat, warmup=1)
    runs = sorted(timing.runs)
    return {"ms": timing.median * 1e3, "p20_ms": runs[len(runs) // 5] * 1e3, "p80_ms": runs[(4 * len(runs)) // 5] * 1e3}


def benchmark_rows(shape: Shape, impls: list[str], device: str, repeat: int = 3) -> tuple[list[dict], dict]:
    inputs = make_inputs(shape, device)
    gpu = device == "cuda"
    ceiling = copy_bandwidth() if gpu else None
    rows = []
    for op in OPS:
        for mode in ("fwd", "fwd+bwd"):
            base_ms = None
            for impl in impls:
                run = step(inputs, op, impl, mode)
                timing = time_gpu(run) if gpu else time_cpu(run, repeat)
                base_ms = base_ms or timing["ms"]
                gbps = min_bytes(shape, op, mode) / timing["ms"] / 1e6
                row = {"op": op, "mode": mode, "impl": impl, **timing,
                       "speedup_vs_reference": base_ms / timing["ms"], "GB_s": gbps}
                if gpu:
                    row["pct_copy_bw"] = 100 * gbps / ceiling
                    row["peak_extra_MiB"] = peak_extra_mib(run)
                rows.append(row)
    config = {"shape": asdict(shape), "impls": impls, "copy_GB_s": ceiling,
              "one_BHNM_fp32_map_MiB": shape.batch * shape.heads * shape.nq * shape.m * 4 / 2 ** 20,
              "source_commit": os.environ.get("FBA_COMMIT")}
    return rows, config


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "tiny shapes on the CPU: reference + Triton interpreter")
    parser.add_argument("--repeat", type=int, default=3, help="CPU repeats per case")
    parser.add_argument("--impls", default=None, help="comma list of reference,sdpa,triton,cuda")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.smoke
    if not gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the fused path first imports triton
    shape = PAPER if gpu else SMOKE
    impls = args.impls.split(",") if args.impls else (
        ["reference", "sdpa", "triton", "cuda"] if gpu else ["reference", "sdpa", "triton"])
    rows, config = benchmark_rows(shape, impls, "cuda" if gpu else "cpu", args.repeat)
    print(f"cross-attention {asdict(shape)}" + (f", copy {config['copy_GB_s']:.0f} GB/s" if gpu else ""))
    print(format_table(rows))
    key = BENCHMARK_KEY if gpu else f"{BENCHMARK_KEY}-smoke"
    path = write_results(key, rows, kind="cuda" if gpu else "cpu", config=config, directory=args.results_dir)
    print(f"wrote {path}")
    return 0


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="pytest-benchmark of the fused kernels needs a GPU")


@GPU
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["reference", "sdpa", "triton", "cuda"])
def test_bench_img2txt(benchmark, impl, mode):
    run = step(make_inputs(PAPER, "cuda"), "img2txt", impl, mode)

    def synced():
        run()
        torch.cuda.synchronize()

    benchmark(synced)


if __name__ == "__main__":
    sys.exit(main())
