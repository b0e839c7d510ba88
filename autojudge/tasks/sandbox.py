"""Run untrusted Python (model output) in a subprocess: time, memory and output limits,
no network, a fresh temporary directory, an empty environment.

Nothing model-generated ever runs in the project's own process. Limits:
- wall time: the process group is killed at ``timeout_s`` (CPU time is capped too);
- memory: ``RLIMIT_AS`` (address space), so a memory bomb dies with MemoryError;
- output: stdout/stderr go to files capped by ``RLIMIT_FSIZE``, like any file it writes;
- network: a fresh network namespace (``unshare --net``, no interfaces but a down
  loopback) where the kernel allows one; otherwise the socket module is disabled before
  the code runs, and ``SandboxResult.network_isolation`` says which one applied;
- files: the working directory is a temporary directory removed afterwards; Python runs
  isolated (``-I``: no user site, no PYTHONPATH, no current directory on sys.path).
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SOCKET_GUARD = """\
import socket as _socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the autojudge sandbox")
_socket.socket = _socket.create_connection = _socket.getaddrinfo = _no_network
del _socket, _no_network
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024
    output_bytes: int = 1_000_000  # per output stream and per file written


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "ok" | "error" | "timeout" | "memory" | "output_limit"
    returncode: int | None
    stdout: str
    stderr: str
    network_isolation: str  # "namespace" | "python-guard"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@functools.cache
def _unshare_prefix() -> tuple[str, ...]:
    """The command prefix that gives the child its own empty network namespace, if any."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for flags in (("--net",), ("--map-root-user", "--net")):
        try:
            if subprocess.run([exe, *flags, "true"], capture_output=True, timeout=10).returncode == 0:
                return (exe, *flags)
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def _limit(limits: SandboxLimits):
    def apply() -> None:  # runs in the child between fork and exec
        memory = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(limits.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``code`` as a script in the sandbox and report how it ended."""
    prefix = _unshare_prefix()
    isolation = "namespace" if prefix else "python-guard"
    with tempfile.TemporaryDirectory(prefix="autojudge-sandbox-") as tmp:
        work = Path(tmp)
        (work / "main.py").write_text(code if prefix else _SOCKET_GUARD + code, encoding="utf-8")
        with open(work / ".stdout", "wb") as out, open(work / ".stderr", "wb") as err:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-B", "main.py"], cwd=work, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, env={"PATH": "/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8"},
                preexec_fn=_limit(limits), start_new_session=True)
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the script and anything it started
                except ProcessLookupError:
                    pass
                returncode = proc.wait()
        stdout = (work / ".stdout").read_bytes()[: limits.output_bytes].decode("utf-8", "replace")
        stderr = (work / ".stderr").read_bytes()[: limits.output_bytes].decode("utf-8", "replace")
    if timed_out or returncode == -signal.SIGXCPU:
        status = "timeout"
    elif returncode == -signal.SIGXFSZ or "File too large" in stderr:
        status = "output_limit"
    elif "MemoryError" in stderr or returncode == -signal.SIGKILL:
        status = "memory"
    else:
        status = "ok" if returncode == 0 else "error"
    return SandboxResult(status, None if timed_out else returncode, stdout, stderr, isolation)
