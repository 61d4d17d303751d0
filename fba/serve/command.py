"""``fba serve``: the work of the command (docs/serving.md).

The contract is read from the model's files here (one line, exit 2, when they are wrong), the Triton repository
is written into the server's workspace, and ``tritonserver`` starts on it; the model loads and warms in Triton's
Python backend (:mod:`fba.serve.triton_model`), and ``fba serve`` says it is serving once Triton reports ready.
SIGTERM and SIGINT drain: Triton stops taking requests, answers those in flight (``--drain-timeout``), and the
command exits 0 with nothing of the server left.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from fba.distributed import rank_device
from fba.serve.model import ServeSpec, describe
from fba.serve.repository import MODEL_NAME, Batching, model_config, write_repository
from fba.serve.server import Ports, ServerStartError, TritonServer

DEFAULT_BUCKETS = (1, 8, 32)


def buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes warmed (CUDA: one graph each): the defaults up to ``max_batch``, and ``max_batch``."""
    return tuple(sorted({b for b in DEFAULT_BUCKETS if b < max_batch} | {max_batch}))


def build_config(args: argparse.Namespace) -> tuple[str, ServeSpec, dict]:
    device = rank_device("cpu" if args.backend == "openvino" and args.device is None else args.device)
    spec = ServeSpec(model=str(args.model.resolve()), backend=args.backend, feature=args.feature, device=str(device),
                     batches=buckets(args.max_batch), trust_native_code=args.trust_native_code,
                     performance_hint=args.performance_hint)
    contract = describe(spec)
    batching = Batching(max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                        max_queue_size=args.max_queue_size, queue_timeout_us=args.queue_timeout_ms * 1000,
                        instances=args.instances)
    threads = max(1, (os.cpu_count() or 1) // args.instances)
    return model_config(spec, contract, batching, threads, args.max_pixels), spec, contract


def run(args: argparse.Namespace) -> int:
    config, spec, contract = build_config(args)
    if args.write_repository is not None:
        write_repository(args.write_repository, config)
        print(f"wrote the Triton model repository {args.write_repository / MODEL_NAME} ({contract['feature']} "
              f"feature, {contract['feature_dim']} dims)")
        return 0
    ports = Ports(args.host, args.http_port, args.grpc_port, args.metrics_port)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    server = TritonServer(ports, exit_timeout_s=args.drain_timeout, log_info=args.verbose)
    try:
        write_repository(server.repository, config)
        server.start()
        if not _wait(lambda: server.ready() or not server.running() or stop.is_set(), args.ready_timeout):
            raise ServerStartError(f"the model was not ready within --ready-timeout {args.ready_timeout} s")
        if stop.is_set():
            return 0
        if not server.running():
            raise ServerStartError(f"tritonserver exited with code {server.process.returncode} before it was ready "
                                   "(its log above says why)")
        print(f"fba serve: {MODEL_NAME} ready ({contract['feature']} feature, {contract['feature_dim']} dims, "
              f"{spec.backend} on {spec.device}, {args.instances} instance(s)): http {ports.url}, grpc "
              f"{ports.host}:{ports.grpc}, metrics http://{ports.host}:{ports.metrics}/metrics", flush=True)
        _wait(lambda: not server.running() or stop.is_set(), None)
        if not stop.is_set():
            print(f"fba serve: tritonserver exited with code {server.process.returncode}", file=sys.stderr)
            return 1
        print("fba serve: draining (new requests refused, those in flight answered)", file=sys.stderr, flush=True)
        return 0
    finally:
        code = server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if stop.is_set():
            print(f"fba serve: stopped (tritonserver exit code {code}), nothing left behind", file=sys.stderr)


def _wait(done: Callable[[], bool], timeout_s: float | None, poll_s: float = 0.2) -> bool:
    """Poll ``done`` until it is true (True) or ``timeout_s`` passes (False)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not done():
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
