"""One GPU check, one run: everything the GPU numbers in docs/ come from, in order of value, within 8 minutes.

    make gpu-suite                                  # = python3 -m benchmarks.gpu_suite, on a bare GPU machine
    python3 -m benchmarks.gpu_suite --rehearse      # the same plan at smoke sizes on the CPU (part of make test)

A bare GPU machine has python3 with torch and Triton; what else the suite imports comes as wheels in ``.whl/``
(listed, with how to fetch them, in ``benchmarks/gpu_suite_wheels.txt``), installed offline by the first step.
Steps, each a subprocess with its own timeout inside the overall ``--deadline-s`` (a step with no time left is
recorded as skipped), each writing its rows as soon as it has them:

1. ``setup``: the carried wheels, the in-place ``fba.kernels`` layout, ``fba._C``; the CUDA extension's JIT
   build starts in the background. The rehearsal installs the carried DeepSpeed set (DeepSpeed and the
   dependencies a bare GPU machine lacks) into a scratch folder, not the project's environment, and its
   ``+deepspeed`` row runs on it: a wheel missing from ``.whl/`` fails here, not on the GPU;
2. ``gpu-tests``: the GPU tests (kernels at the paper's sizes, fused module, CUDA-graph embedding) and the CPU
   twins, Triton without autotuning; ``gpu-tests-cuda``: the CUDA C++ kernel's tests, once its build is done;
3. ``cross_attention``: fused vs reference vs SDPA, forward and forward+backward, GB/s against measured copy;
4. ``train_step``: eager (fused kernels, cached text), compiled, and ``fba train``'s own step on its DeepSpeed
   engine (``+deepspeed*``: the trainer's ``build_engine`` and ``TrainStep``);
5. ``embed``: eager, compiled, fast (uint8 + CUDA graphs), fast-compiled; batch 1/32/256; image and captions;
6. ``input``: DALI's GPU pipeline when DALI is installed; ``decode``: nvJPEG through torchvision (the stand-in).

Results: ``benchmarks/results/<device>.json`` (each benchmark's key, plus ``gpu_suite`` with one row per step:
status, seconds, where its numbers are) and ``benchmarks/results/gpu_suite-logs/<step>.log``. A run cut short
keeps every row it finished: the benchmarks write after every variant, this file after every step.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.common import REPO_ROOT, format_table, results_dir, write_results

WHEELS_DIR = REPO_ROOT / ".whl"
DEADLINE_S = 470  # 8 minutes less the interpreter start and the last write
TRAIN_VARIANTS = ("+cached-text", "+compile", "+deepspeed", "+deepspeed-zero2", "+deepspeed-lowp")
EMBED_VARIANTS = ("eager-bf16", "compiled", "fast", "fast-compiled")
# The rehearsal runs the variants no smoke test runs (tests/benchmarks/test_bench_smoke_* run the others) and
# leaves out the Inductor builds (minutes on 2 CPU cores); every GPU variant name is checked by the tests.
REHEARSE_TRAIN_VARIANTS = ("+compile", "+deepspeed")
REHEARSE_EMBED_VARIANTS = ("fast",)
# DeepSpeed and what it needs beyond what a bare GPU machine has (benchmarks/gpu_suite_wheels.txt)
DEEPSPEED_WHEELS = ("deepspeed", "pydantic", "pydantic_core", "annotated_types", "typing_inspection", "hjson",
                    "packaging")
SCRATCH = "gpu_suite-scratch"  # under the results folder: where the rehearsal installs the DeepSpeed set
GPU_TESTS = ["tests/kernels", "tests/embed/test_fast_embed.py", "tests/model/test_model_cross_modal.py"]


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: float
    result_key: str | None = None  # where its numbers go in <device>.json
    env: dict = field(default_factory=dict)
    skip: str | None = None  # why it does not run here


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def carried_wheels() -> dict[str, list[Path]]:
    """The wheels in ``.whl/`` by project name (normalised as wheel file names spell it)."""
    wheels: dict[str, list[Path]] = {}
    for path in sorted(WHEELS_DIR.glob("*.whl")):
        wheels.setdefault(path.name.split("-")[0].lower(), []).append(path)
    return wheels


def plan(rehearse: bool, out: Path) -> list[Step]:
    """The steps in order of value; ``rehearse`` keeps the commands and shrinks the sizes (CPU)."""
    res = ["--results-dir", str(out)]
    junit = out / "gpu_suite-logs"
    pytest_mode = ["--collect-only", "-q"] if rehearse else ["-q", "-rs"]
    smoke = ["--smoke", "--device", "cpu"] if rehearse else []
    deepspeed = _has("deepspeed") or "deepspeed" in carried_wheels()
    train_env = {"FBA_BENCH_COMPILE_BACKEND": "eager",
                 "PYTHONPATH": os.pathsep.join([str(out / SCRATCH), str(REPO_ROOT)])} if rehearse else {}
    train = REHEARSE_TRAIN_VARIANTS if rehearse else [
        v for v in TRAIN_VARIANTS if deepspeed or not v.startswith("+deepspeed")]
    return [
        Step("setup", _python("-m", "benchmarks.gpu_suite", "--setup-only", *res, *(["--rehearse"] if rehearse else [])),
             120),
        Step("gpu-tests", _python("-m", "pytest", *GPU_TESTS, "-k", "not cuda", "-m", "not slow", *pytest_mode,
                                  f"--junitxml={junit / 'gpu-tests.xml'}"),
             150, env={"FBA_TRITON_AUTOTUNE": "0"}),
        Step("gpu-tests-cuda", _python("-m", "pytest", *GPU_TESTS, "-k", "cuda", "-m", "not slow", *pytest_mode,
                                       f"--junitxml={junit / 'gpu-tests-cuda.xml'}"),
             150, env={"FBA_TRITON_AUTOTUNE": "0"}),
        Step("cross_attention", _python("-m", "benchmarks.bench_cross_attention", *res,
                                        *(["--smoke", "--repeat", "1"] if rehearse else [])),
             100, "cross_attention" + ("-smoke" if rehearse else "")),
        Step("train_step", _python("-m", "benchmarks.bench_train_step", *smoke, *res, "--append", "--variants", *train,
                                   "--steps", "1" if rehearse else "8", "--warmup", "1" if rehearse else "2"),
             170, "train_step" + ("-smoke" if rehearse else ""), env=train_env),
        Step("embed", _python("-m", "benchmarks.bench_embed", *smoke, *res, "--append", "--variants",
                              *(REHEARSE_EMBED_VARIANTS if rehearse else EMBED_VARIANTS)),
             150, "embed" + ("-smoke" if rehearse else "")),
        Step("input", _python("-m", "benchmarks.bench_input", *res, *(["--smoke"] if rehearse else [])), 60,
             "input" + ("-smoke" if rehearse else ""),
             skip=None if _has("nvidia.dali") else "DALI is not installed (its wheel is ~0.5 GB: see docs/performance.md)"),
        Step("decode", _python("-m", "benchmarks.bench_decode", *res, *(["--smoke"] if rehearse else [])), 40,
             "decode" + ("-smoke" if rehearse else "")),
    ]


def _run(step: Step, timeout: float, log: Path) -> tuple[str, int | None]:
    """Run one step in its own process group; on timeout the whole group is stopped (TERM, then KILL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           **step.env}
    with log.open("w") as sink:
        proc = subprocess.Popen(step.argv, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return f"timeout after {timeout:.0f} s", None
    return ("ok" if rc == 0 else f"failed (exit {rc})"), rc


def run_suite(rehearse: bool, out: Path, deadline_s: float, only: list[str] | None = None) -> list[dict]:
    start = time.monotonic()
    kind = "cpu" if rehearse else "cuda"
    key = "gpu_suite" + ("-rehearse" if rehearse else "")
    logs = out / "gpu_suite-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for step in plan(rehearse, out):
        if only and step.name not in only:
            continue
        left = deadline_s - (time.monotonic() - start)
        row = {"step": step.name, "result_key": step.result_key, "command": " ".join(step.argv[1:])}
        if step.skip:
            row.update(status=f"skipped: {step.skip}", seconds=0.0)
        elif left < 15:
            row.update(status=f"skipped: out of time ({left:.0f} s of {deadline_s:.0f} s left)", seconds=0.0)
        else:
            began = time.monotonic()
            status, rc = _run(step, min(step.timeout_s, left), logs / f"{step.name}.log")
            tail = (logs / f"{step.name}.log").read_text(errors="replace")[-1500:]
            row.update(status=status, rc=rc, seconds=round(time.monotonic() - began, 1), log_tail=tail)
        rows.append(row)
        print(f"[gpu_suite] {step.name}: {row['status']} ({row['seconds']} s)", flush=True)
        if row.get("rc"):  # the reason travels with the suite's own output (CI shows nothing else)
            print("\n".join(f"    | {line}" for line in row["log_tail"].splitlines()[-25:]), flush=True)
        write_results(key, rows, kind=kind, directory=out,
                      config={"rehearse": rehearse, "deadline_s": deadline_s, "python": sys.executable,
                              "steps": [asdict(s) for s in plan(rehearse, out)]})
    print(format_table(rows, ("step", "status", "seconds", "result_key")))
    return rows


def _install_deepspeed_set(wheels: dict[str, list[Path]], scratch: Path) -> int:
    """The rehearsal's install: the carried DeepSpeed set into ``scratch`` (never the project's environment),
    then one import of it from there. Without ``.whl/`` (a fresh clone) the environment's DeepSpeed runs."""
    if not wheels:
        print(f"rehearsal: no wheels in {WHEELS_DIR} (make gpu-wheels); the +deepspeed row uses this environment's")
        return 0
    missing = [name for name in DEEPSPEED_WHEELS if name not in wheels]
    if missing:
        print(f"rehearsal: {WHEELS_DIR} lacks {', '.join(missing)}: the GPU machine could not import DeepSpeed")
        return 1
    shutil.rmtree(scratch, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--find-links",
                    str(WHEELS_DIR), "--target", str(scratch), *DEEPSPEED_WHEELS], check=True)
    probe = "import deepspeed, pydantic; print(deepspeed.__version__, deepspeed.__file__)"
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(scratch)},
                          capture_output=True, text=True)
    found = done.stdout.strip().splitlines()[-1:] or [done.stderr[-2000:]]  # DeepSpeed logs to stdout first
    print(f"rehearsal: installed the DeepSpeed set into {scratch}; imported from there: {found[0]}")
    return done.returncode


def setup(out: Path, rehearse: bool) -> int:
    """Carried wheels, the ``fba.kernels`` layout of a checkout, ``fba._C``, and the CUDA extension's build in the
    background (the CUDA tests wait for it). Missing optional parts are said, not fatal. A rehearsal installs
    only the DeepSpeed set, into a scratch folder, and builds nothing in the checkout."""
    wheels = carried_wheels()
    if rehearse:
        rc = _install_deepspeed_set(wheels, out / SCRATCH)
        if rc:
            return rc
    elif wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--find-links", str(WHEELS_DIR), *wheels], check=True)
        print(f"installed {len(wheels)} packages from {WHEELS_DIR}: {', '.join(wheels)}")
    link = REPO_ROOT / "fba" / "kernels"
    if rehearse:  # the rehearsal runs inside an installed checkout: rebuilding fba._C in place would overwrite
        print("rehearsal: would link fba/kernels and build fba._C in place")  # the .so that running tests mapped
    else:
        if not link.exists():
            link.symlink_to(Path("..") / "kernels")
            print(f"linked {link} -> ../kernels (the checkout layout)")
        built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=REPO_ROOT)
        print("fba._C built" if built.returncode == 0 else "fba._C not built (metrics fall back to NumPy)")
    import torch

    if torch.cuda.is_available():
        log = out / "gpu_suite-logs" / "cuda-build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        subprocess.Popen([sys.executable, "-c", "from fba.kernels import cross_attention_cuda as c; c.extension()"],
                         cwd=REPO_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        print(f"CUDA extension build started in the background (log: {log})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rehearse", action="store_true", help="the same plan at smoke sizes on the CPU")
    parser.add_argument("--results-dir", default=None, help="default benchmarks/results (or $FBA_BENCH_RESULTS)")
    parser.add_argument("--deadline-s", type=float, default=DEADLINE_S, help="wall clock for all steps")
    parser.add_argument("--steps", nargs="+", help="run only these steps (by name)")
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = results_dir(args.results_dir)
    if args.setup_only:
        return setup(out, args.rehearse)
    if args.rehearse:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU plan even on a GPU machine
    else:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --rehearse on a CPU machine")
    names = [s.name for s in plan(args.rehearse, out)]
    unknown = sorted(set(args.steps or []) - set(names))
    if unknown:
        parser.error(f"unknown steps {unknown}; known: {', '.join(names)}")
    rows = run_suite(args.rehearse, out, args.deadline_s, args.steps)
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
