"""A real ``tritonserver`` process (the binary the nvidia-pytriton wheel ships), on loopback.

``TritonServer(repo).start()`` prepares a backend directory with the Python-backend stub for
this interpreter, picks free ports (unless given), starts the server bound to 127.0.0.1 with
this environment's Python first on PATH (the stub imports the models' code from it), waits
until it is ready, and copies its log to a file or a callback. ``stop()`` (or leaving the
``with`` block, Ctrl-C included) shuts it down: SIGINT, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

from autojudge.errors import AutoJudgeError, MissingDependencyError
from autojudge.storage import cache_root

INSTALL_HINT = "pip install 'autojudge[serve]' (nvidia-pytriton ships the tritonserver binary)"


def pytriton_server_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise MissingDependencyError(f"serving needs Triton Inference Server: {INSTALL_HINT}") from exc
    folder = Path(pytriton.__file__).parent / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise MissingDependencyError(f"{folder / 'bin' / 'tritonserver'} is missing; reinstall: {INSTALL_HINT}")
    return folder


def backend_dir(server_dir: Path) -> Path:
    """A backends/ folder whose python/ holds the backend library and this Python's stub."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise MissingDependencyError(f"nvidia-pytriton has no Python-backend stub for Python {version} ({stub})")
    target = cache_root() / "triton-backends" / f"py{version}-{abs(hash(str(server_dir))) % 10**8}"
    python = target / "python"
    if not (python / "triton_python_backend_stub").is_file():
        python.mkdir(parents=True, exist_ok=True)
        for source in (server_dir / "backends" / "python").iterdir():
            if source.is_file():
                shutil.copy2(source, python / source.name)
        tmp = python / "triton_python_backend_stub.tmp"
        shutil.copy2(stub, tmp)
        tmp.replace(python / "triton_python_backend_stub")
    return target


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so no server is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    def __init__(self, repository: str | Path, host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0,
                 log_file: str | Path | None = None, on_log: Callable[[str], None] | None = None,
                 ready_timeout_s: float = 300.0):
        self.repository = Path(repository)
        self.host = host
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.log_file = Path(log_file) if log_file else None
        self.on_log = on_log
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None
        self.log_tail: deque[str] = deque(maxlen=60)
        self._pump: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        server_dir = pytriton_server_dir()
        return [str(server_dir / "bin" / "tritonserver"), "--model-repository", str(self.repository),
                "--backend-directory", str(backend_dir(server_dir)),
                "--http-address", self.host, "--http-port", str(self.http_port),
                "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
                "--allow-metrics=false", "--log-verbose=0"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # OpenMP's wait policy is left to libgomp (spin a while, then sleep) unless the caller sets
        # OMP_WAIT_POLICY: instances never oversubscribe the cores (each gets cores / instances torch
        # threads, repo.py), and PASSIVE made every op of a two-thread instance wake its worker from
        # sleep: the served target decoded 11 tokens/s at one client against 17 without it.
        # (The stubs inherit this environment: observed in their /proc/<pid>/environ, nvidia-pytriton 0.7.0.)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        libs = pytriton_server_dir().parent.parent / "nvidia_pytriton.libs"
        # The stub embeds libpython: make it load this interpreter's own (a system libpython of
        # another patch release cannot import this interpreter's compiled stdlib modules).
        own = sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else None
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (own, str(libs), env.get("LD_LIBRARY_PATH")) if p)
        return env

    def start(self) -> TritonServer:
        self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, errors="replace",
                                        start_new_session=True,  # our Ctrl-C is handled by stop()
                                        preexec_fn=_die_with_parent)
        self._pump = threading.Thread(target=self._copy_log, daemon=True)
        self._pump.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _copy_log(self) -> None:
        sink = open(self.log_file, "a", encoding="utf-8") if self.log_file else None  # noqa: SIM115
        try:
            for line in self.process.stdout:
                self.log_tail.append(line.rstrip())
                if sink:
                    sink.write(line)
                    sink.flush()
                if self.on_log:
                    self.on_log(line.rstrip())
        finally:
            if sink:
                sink.close()

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._pump.join(timeout=2)
                raise AutoJudgeError(f"tritonserver exited with status {self.process.returncode} before it was "
                                     "ready; its log ends with:\n" + "\n".join(self.log_tail))
            if self.is_ready():
                return
            time.sleep(0.5)
        raise AutoJudgeError(f"tritonserver was not ready after {self.ready_timeout_s:.0f} s; its log ends with:\n"
                             + "\n".join(self.log_tail))

    def stop(self, grace_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        if self._pump:
            self._pump.join(timeout=5)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
