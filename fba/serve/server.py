"""Triton Inference Server as ``fba serve`` runs it: the server and Python backend of the ``nvidia-pytriton``
wheel, started on a repository in a workspace of this process, stopped by draining, and leaving nothing behind.

The wheel ships ``tritonserver``, the Python backend and one backend stub per Python version. The stub embeds
the interpreter whose ``python3`` comes first on its ``PATH`` (that interpreter's environment, so this one's
packages and fba) and needs that interpreter's shared ``libpython``; it is built against NumPy 1.x's ABI (with
NumPy 2 its output tensors come out with the wrong size), which is why the wheel pins ``numpy<2``.
:func:`check_triton` says which of these a machine lacks.

Everything the server writes outside the process is named after this process's pid: the workspace
``$TMPDIR/fba-serve-<pid>-*`` (the repository and the backend folder) and the backend's shared-memory regions
``/dev/shm/fba-serve-<pid>-*``. :meth:`TritonServer.stop` removes both; a server killed outright leaves them to
the next ``fba serve``, which removes those of processes that no longer run. ``tritonserver`` gets SIGTERM when
this process dies (``PR_SET_PDEATHSIG``; it is started from the main thread, which lives as long as the process),
and its stubs end with it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fba.errors import UsageError
from fba.utils.atomic import remove_orphans

PREFIX = "fba-serve-"
SHM_ROOT = Path("/dev/shm")
MIN_GLIBC = (2, 35)
# PyTorch's OpenMP workers spin after each parallel region (300,000 turns by default) before they sleep. In the
# backend stub they spin on the cores the server's own threads need to send the answer: on 2 cores 6 in 100
# requests of the tiny model took ~520 ms instead of ~3 ms at 8 in flight. 20,000 turns kept the ~3 ms p50
# and made such stalls about 1 in 1,000 (OMP_WAIT_POLICY=PASSIVE: 1 in 1,000 too, but p50 5-6 ms).
OPENMP_SPIN = 20_000


class ServerStartError(UsageError):
    """Triton could not start on this machine, or exited before it was ready."""


@dataclass(frozen=True)
class Ports:
    host: str = "127.0.0.1"
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http}"


def _triton_root() -> Path | None:
    found = importlib.util.find_spec("pytriton")
    return None if found is None or not found.submodule_search_locations else Path(
        list(found.submodule_search_locations)[0])


def check_triton() -> str | None:
    """Why Triton cannot run here (one line), or None when it can."""
    root = _triton_root()
    if root is None:
        return "nvidia-pytriton is not installed (pip install -e '.[serve]')"
    libc = platform.libc_ver()
    if libc[0] == "glibc" and tuple(int(x) for x in libc[1].split(".")[:2]) < MIN_GLIBC:
        return f"the Triton server of nvidia-pytriton needs glibc >= 2.35; this machine has {libc[1]}"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not (root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub").is_file():
        return f"nvidia-pytriton has no Python backend stub for Python {version}"
    if not _libpython().is_file():
        return f"the Python backend stub needs this interpreter's shared library, and {_libpython()} does not exist"
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        return f"Triton's Python backend stub needs NumPy 1.x (its ABI), this environment has NumPy {numpy.__version__}"
    return None


def _libpython() -> Path:
    return Path(sysconfig.get_config_var("LIBDIR") or "") / (sysconfig.get_config_var("LDLIBRARY") or "libpython.so")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """One ``tritonserver`` process on ``repository`` (a folder :mod:`fba.serve.repository` wrote)."""

    def __init__(self, ports: Ports, exit_timeout_s: int = 10, log_info: bool = False):
        problem = check_triton()
        if problem:
            raise ServerStartError(f"cannot start Triton: {problem}")
        for folder in (Path(tempfile.gettempdir()), SHM_ROOT):  # what servers killed outright left
            remove_orphans(folder, PREFIX)
        self.ports = ports
        self.exit_timeout_s = exit_timeout_s
        self.log_info = log_info
        self.shm_prefix = f"{PREFIX}{os.getpid()}-"
        self.workspace = Path(tempfile.mkdtemp(prefix=self.shm_prefix))
        self.repository = self.workspace / "models"
        self.process: subprocess.Popen | None = None

    def _backends(self) -> Path:
        """The Python backend of the wheel with the stub of this interpreter's version, as Triton looks for it."""
        root = _triton_root() / "tritonserver"
        python = self.workspace / "backends" / "python"
        python.mkdir(parents=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        for source in [*(root / "backends" / "python").iterdir(),
                       root / "python_backend_stubs" / version / "triton_python_backend_stub"]:
            if source.name != "__pycache__":
                (python / source.name).symlink_to(source)
        return python.parent

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(_libpython().parent), str(_triton_root().parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("GOMP_SPINCOUNT", str(OPENMP_SPIN))
        return env

    def start(self) -> None:
        p = self.ports
        command = [
            str(_triton_root() / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={self.repository}", f"--backend-directory={self._backends()}",
            f"--http-address={p.host}", f"--http-port={p.http}", f"--grpc-address={p.host}", f"--grpc-port={p.grpc}",
            f"--metrics-address={p.host}", f"--metrics-port={p.metrics}", "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}", "--strict-readiness=true", "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-info={'true' if self.log_info else 'false'}",
        ]
        self.process = subprocess.Popen(command, env=self._environment(), stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.ports.url}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """Drain and stop: Triton refuses new requests, answers those in flight (up to ``exit_timeout_s``), unloads
        the model and exits; then the workspace and shared memory go. Returns the server's exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
            try:
                code = self.process.wait(timeout=self.exit_timeout_s + 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        shutil.rmtree(self.workspace, ignore_errors=True)
        for region in SHM_ROOT.glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
        return code
