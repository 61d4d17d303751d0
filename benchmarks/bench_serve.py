"""``fba serve`` under load against the same model called in-process, and against ``fba embed`` per call.

    python -m benchmarks.bench_serve            # tiny model (64x32) and ViT-B/16 (384x128, stride 12), CPU
    python -m benchmarks.bench_serve --smoke    # tiny model, few requests (make test)

The server is started as a user starts it (``fba serve --model model.pt``, a subprocess, stopped by SIGTERM)
and driven by ``tritonclient``, keeping ``concurrency`` requests of one crop each in flight (what a tracker sends
per detection): over gRPC one client whose callbacks send the next request, so the load generator costs the
shared cores little; over HTTP one thread and client per request in flight. The crops are JPEG files read from
disk and resized as ``fba embed`` resizes them, sent as uint8 ``images``. Rows:

- ``in-process per request``: :class:`fba.serve.model.ServedModel` (the object the server runs), one crop a call,
  in this process: the floor of the server's latency at concurrency 1;
- ``in-process batched``: the same object on batches of ``--max-batch`` crops: the floor of its throughput;
- ``grpc`` / ``http`` at each concurrency: p50 / p99 of each request as its client sees it, and images/s;
- ``fba embed per call``: one crop through ``fba embed`` (a process per call, as a script without a server runs it).

The ``server_*`` columns are Triton's own statistics over the same requests (``/v2/models/fba_reid/stats``):
queue, and the Python backend's compute (input, model, output), so client p50 minus those is the transport.
Calls are interleaved by round: each round runs every in-process and server case once.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from benchmarks.common import benchmark_parser, build_bench_model, format_table, percentile, record_rows

BENCHMARK_KEY = "serve"
MODEL = "fba_reid"
READY_S = 600
COLUMNS = ("arch", "image", "variant", "concurrency", "p50_ms", "p99_ms", "img_per_s", "vs_in_process",
           "server_queue_ms", "server_compute_ms", "requests_per_call", "failed")


@dataclass(frozen=True)
class ServeShape:
    arch: str
    height: int
    width: int
    stride: int
    concurrency: tuple[int, ...]
    requests: int  # per client thread
    rounds: int
    num_classes: int = 751
    embed_calls: int = 3


TINY = ServeShape("tiny", 64, 32, 12, concurrency=(1, 8, 32), requests=40, rounds=2)
VIT = ServeShape("ViT-B-16", 384, 128, 12, concurrency=(1, 8, 32), requests=2, rounds=1, embed_calls=1)
SMOKE = ServeShape("tiny", 64, 32, 12, concurrency=(1, 4), requests=3, rounds=1, num_classes=16, embed_calls=1)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Launched:
    """An ``fba serve`` subprocess, its addresses and its output so far."""

    process: subprocess.Popen
    http: str
    grpc: str
    metrics: str
    log: list[str]


@contextmanager
def launch(args: list[str], env: dict[str, str] | None = None, ready_s: float = READY_S) -> Iterator[Launched]:
    """``fba serve ARGS`` on 127.0.0.1 with free ports, until it says ready; SIGTERM (then SIGKILL) by pid at exit."""
    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "fba.cli", "serve", *args, "--host", "127.0.0.1", "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(env or os.environ, PYTHONUNBUFFERED="1"))
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(iter(process.stdout.readline, "")), daemon=True).start()
    served = Launched(process, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}", log)
    try:
        deadline = time.monotonic() + ready_s
        while not any("ready (" in line for line in log):
            if process.poll() is not None:
                raise RuntimeError(f"fba serve exited with {process.returncode}:\n{''.join(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fba serve was not ready within {ready_s:.0f} s:\n{''.join(log)}")
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def write_inputs(shape: ServeShape, folder: Path, count: int = 64) -> tuple[Path, list[Path]]:
    """A random-weight model.pt of ``shape`` and ``count`` JPEG crops (of another size than the model's)."""
    from PIL import Image

    from fba.config import load_config
    from fba.model.model_file import export_model

    _, model = build_bench_model(shape, "reference", torch.device("cpu"))
    cfg = load_config(None, [f"model.arch={shape.arch}", f"model.stride={shape.stride}", f"data.height={shape.height}",
                             f"data.width={shape.width}"])
    checkpoint = export_model(model, folder / "model.pt", cfg, shape.num_classes, (shape.height, shape.width))
    rng = np.random.default_rng(0)
    crops = []
    for i in range(count):
        path = folder / "crops" / f"{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (shape.height + 17, shape.width + 9, 3), dtype=np.uint8)).save(path)
        crops.append(path)
    return checkpoint, crops


def read_crops(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    from fba.data.transforms import build_eval_uint8_transform, read_image

    resize = build_eval_uint8_transform(*size)
    return torch.stack([resize(read_image(str(p))) for p in paths]).numpy()


def _stats(client) -> dict[str, float]:
    """Triton's cumulative counts and nanoseconds for the model."""
    stats = client.get_inference_statistics(MODEL).model_stats[0]
    inference = stats.inference_stats
    return {"count": inference.success.count, "queue": inference.queue.ns, "input": inference.compute_input.ns,
            "infer": inference.compute_infer.ns, "output": inference.compute_output.ns,
            "executions": stats.execution_count}


def _inputs(module, images: np.ndarray, count: int, offset: int = 0) -> list:
    tensors = []
    for k in range(count):
        row = images[(offset + k) % len(images)][None]
        tensor = module.InferInput("images", list(row.shape), "UINT8")
        tensor.set_data_from_numpy(row)
        tensors.append(tensor)
    return tensors


def _grpc_load(served: Launched, images: np.ndarray, concurrency: int, total: int,
               latencies: list[float], failures: list[str]) -> None:
    """``concurrency`` requests kept in flight by one client (gRPC's own threads call back and send the next),
    so the load generator costs the shared cores as little as it can."""
    import tritonclient.grpc as grpc

    stub = grpc.InferenceServerClient(served.grpc)
    inputs = _inputs(grpc, images, min(total, len(images)))
    stub.infer(MODEL, [inputs[0]])
    lock, finished = threading.Lock(), threading.Event()
    state = {"sent": 0, "answered": 0}

    def send() -> None:
        with lock:
            if state["sent"] == total:
                return
            index = state["sent"]
            state["sent"] += 1
        start = time.perf_counter()
        stub.async_infer(MODEL, [inputs[index % len(inputs)]], lambda result, error: answered(start, error))

    def answered(start: float, error) -> None:
        latencies.append(time.perf_counter() - start)
        if error is not None:
            failures.append(str(error)[:200])
        with lock:
            state["answered"] += 1
            if state["answered"] == total:
                finished.set()
        send()

    for _ in range(concurrency):
        send()
    finished.wait()
    stub.close()


def _http_load(served: Launched, images: np.ndarray, concurrency: int, total: int,
               latencies: list[float], failures: list[str]) -> None:
    """``concurrency`` threads, each with its own client (tritonclient.http's rule), sending in turn."""
    import tritonclient.http as http

    def client(index: int) -> None:
        stub = http.InferenceServerClient(served.http)
        inputs = _inputs(http, images, total // concurrency, index * (total // concurrency))
        for tensor in inputs:
            start = time.perf_counter()
            try:
                stub.infer(MODEL, [tensor])
                latencies.append(time.perf_counter() - start)
            except Exception as err:  # noqa: BLE001 - counted, the table says how many
                failures.append(str(err)[:200])
        stub.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def drive(served: Launched, protocol: str, images: np.ndarray, concurrency: int, requests: int) -> dict:
    """``concurrency`` requests in flight, one crop each, ``requests`` per unit of concurrency: latency and rate as
    the client sees them, and Triton's own account of the same requests."""
    import tritonclient.grpc as grpc

    stats_client = grpc.InferenceServerClient(served.grpc)
    latencies: list[float] = []
    failures: list[str] = []
    load = _grpc_load if protocol == "grpc" else _http_load
    before, start = _stats(stats_client), time.perf_counter()
    load(served, images, concurrency, concurrency * requests, latencies, failures)
    wall = time.perf_counter() - start
    after = _stats(stats_client)
    count = max(1, after["count"] - before["count"])
    per_request = {key: (after[key] - before[key]) / count / 1e6 for key in ("queue", "input", "infer", "output")}
    return {
        "p50_ms": 1e3 * percentile(latencies, 0.5), "p99_ms": 1e3 * percentile(latencies, 0.99),
        "img_per_s": (len(latencies) - len(failures)) / wall, "failed": len(failures),
        "server_queue_ms": per_request["queue"], "server_compute_ms": per_request["input"] + per_request["infer"]
        + per_request["output"], "requests_per_call": count / max(1, after["executions"] - before["executions"]),
    }


def in_process(model, images: np.ndarray, batch: int, calls: int) -> dict:
    tensors = [torch.from_numpy(images[(k * batch) % len(images):][:batch]) for k in range(calls)]
    model(tensors[0])
    latencies = []
    for tensor in tensors:
        start = time.perf_counter()
        model(tensor)
        latencies.append(time.perf_counter() - start)
    return {"p50_ms": 1e3 * percentile(latencies, 0.5), "p99_ms": 1e3 * percentile(latencies, 0.99),
            "img_per_s": batch * len(latencies) / sum(latencies), "failed": 0}


def embed_per_call(checkpoint: Path, crop: Path, calls: int, work: Path) -> dict:
    folder = work / "one"
    folder.mkdir(exist_ok=True)
    (folder / crop.name).write_bytes(crop.read_bytes())
    seconds = []
    for k in range(calls):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fba.cli", "embed", "--model", str(checkpoint), "--images", str(folder),
                        "--image-only", "--num-workers", "0", "--out", str(work / f"one-{k}.npz")], check=True,
                       capture_output=True)
        seconds.append(time.perf_counter() - start)
    return {"p50_ms": 1e3 * percentile(seconds, 0.5), "p99_ms": 1e3 * max(seconds), "img_per_s": 1 / np.median(seconds),
            "failed": 0}


def measure_shape(shape: ServeShape, max_batch: int, protocols: tuple[str, ...]) -> Iterator[list[dict]]:
    from fba.serve.model import ServedModel, ServeSpec

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        checkpoint, crops = write_inputs(shape, work)
        images = read_crops(crops, (shape.height, shape.width))
        base = {"arch": shape.arch, "image": f"{shape.height}x{shape.width}", "backend": "pytorch"}
        local = ServedModel(ServeSpec(model=str(checkpoint), batches=(1, max_batch)))
        cases: dict[str, list[dict]] = {}
        with launch(["--model", str(checkpoint), "--max-batch", str(max_batch)]) as served:
            for _ in range(shape.rounds):
                cases.setdefault("in-process per request|1", []).append(
                    in_process(local, images, 1, shape.requests * 2))
                cases.setdefault(f"in-process batched|{max_batch}", []).append(
                    in_process(local, images, max_batch, max(2, shape.requests // 4)))
                time.sleep(1)  # this process's OpenMP threads spin a while after a parallel region: let them sleep
                for protocol in protocols:
                    for concurrency in shape.concurrency:
                        cases.setdefault(f"{protocol}|{concurrency}", []).append(
                            drive(served, protocol, images, concurrency, shape.requests))
        cases["fba embed per call|1"] = [embed_per_call(checkpoint, crops[0], shape.embed_calls, work)]
        rows = []
        for key, results in cases.items():
            variant, concurrency = key.split("|")
            merged = {name: float(np.median([r[name] for r in results])) for name in results[0]}
            rows.append({**base, "variant": variant, "concurrency": int(concurrency), **merged,
                         "rounds": len(results)})
        reference = {r["variant"]: r for r in rows}
        for row in rows:
            if row["variant"] in protocols:
                floor = reference["in-process per request"] if row["concurrency"] == 1 else reference[
                    "in-process batched"]
                row["vs_in_process"] = (row["p50_ms"] - floor["p50_ms"] if row["concurrency"] == 1
                                        else row["img_per_s"] / floor["img_per_s"])
        yield rows


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "tiny model, a few requests at concurrency 1 and 4 (make test)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--tiny-only", action="store_true", help="skip ViT-B/16")
    args = parser.parse_args(argv)
    shapes = [SMOKE] if args.smoke else [TINY] + ([] if args.tiny_only else [VIT])
    protocols = ("grpc",) if args.smoke else ("grpc", "http")
    key = BENCHMARK_KEY + ("-smoke" if args.smoke else "")
    load = os.getloadavg()[0]
    config = {"shapes": [asdict(s) for s in shapes], "max_batch": args.max_batch, "protocols": list(protocols),
              "load_average_1m_at_start": load, "threads": torch.get_num_threads()}
    print(f"load average at start {load:.2f}; {os.cpu_count()} cores", flush=True)
    groups = (rows for shape in shapes for rows in measure_shape(shape, args.max_batch, protocols))
    record_rows(key, groups, kind="cpu", config=config, directory=args.results_dir, append=False,
                show=lambda rows: format_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
