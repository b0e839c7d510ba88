"""Run untrusted Python (model output) isolated by bubblewrap, with time, memory, process,
output and disk limits.

Nothing model-generated ever runs in the project's own process, nor outside the sandbox:
where no isolation is available, :func:`run_python` raises :class:`SandboxUnavailable`
saying what to install (never a weaker fallback). What a run gets (SECURITY.md has the list
of what this guarantees and why):

- its own user, pid, mount, network, IPC, UTS and cgroup namespaces (``bwrap --unshare-all
  --unshare-user``), as uid/gid 65534 with no capabilities, ``no_new_privs`` and no way to
  make further user namespaces: other processes, the host network (loopback included) and
  the parent's ``/proc`` entries do not exist for it. Started by root, bwrap itself first
  drops to a fresh unprivileged uid of its own, so the sandbox is nobody outside too;
- a read-only view of the system libraries and of this Python installation only (no home
  directories, no project files), a fresh ``/proc`` and a minimal read-only ``/dev`` (its
  ``/dev/shm`` a 1 MB tmpfs);
- its own code read-only in ``/code``, and a fresh ``/tmp`` (a size-bounded tmpfs) as its only
  writable place, the working directory among it;
- limits (``prlimit`` on bwrap, so nothing runs between fork and exec in this process): wall
  time (everything killed at ``timeout_s``; CPU time capped too), address space per process
  (``RLIMIT_AS``), open files (``RLIMIT_NOFILE``: bounds memfds, which ``RLIMIT_AS`` does not
  count, to ``files * output_bytes``), processes (``RLIMIT_NPROC``, set inside the sandbox, so
  it counts the run's own processes only); file size (``RLIMIT_FSIZE``) and disk (the tmpfs
  size). Memory across all its processes: at most ``processes * (memory_mb + files *
  output_bytes)`` plus ``disk_mb``;
- when the run ends, every process it started dies with it (bwrap is the pid namespace's init);
- stdout/stderr are pipes the parent holds, read while the code runs and capped while reading
  (the run is killed past ``output_bytes``): nothing is reopened by a name the code could
  replace.
"""

from __future__ import annotations

import functools
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autojudge.errors import AutoJudgeError

INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) "
                "on a kernel and container runtime that allow user namespaces (sysctl user.max_user_namespaces "
                "> 0, a seccomp profile that permits creating namespaces); see SECURITY.md")
SANDBOX_UID = 65534  # nobody, inside the sandbox
HOST_UIDS = (1_500_000_000, 1_000_000)  # started by root: a random host uid in [first, first + count)
WORK_DIR = "/tmp/autojudge-sandbox-run"  # the code's working directory inside the sandbox
CODE_DIR = "/code"  # the code itself, read-only
SHM_BYTES = 2**20  # /dev/shm (multiprocessing's semaphores need a little)
_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")

# The first code of every run, inside the sandbox: it caps processes (here RLIMIT_NPROC counts
# this run's user namespace only), then runs the program and, with a proof asked for, prints
# the run's nonce only if the program returned normally. The nonce comes on stdin and is read
# before the program starts (code that exits early cannot have printed it); it stays a local of
# the runner's frame, and os.write and os._exit are bound before the program could replace
# them. Code that deliberately searches the runner's frames can still find it: SECURITY.md says
# what this proof does and does not cover.
_RUNNER = """\
def _main():
    import os, resource, sys
    resource.setrlimit(resource.RLIMIT_NPROC, ({processes}, {processes}))
    nonce, write, exit = sys.stdin.readline().strip(), os.write, os._exit
    sys.stdin.close()
    with open({path!r}, encoding="utf-8") as f:
        code = compile(f.read(), "main.py", "exec")
    exec(code, {{"__name__": "__main__", "__builtins__": __builtins__}})
    sys.stdout.flush(); sys.stderr.flush()
    if nonce:
        write(1, ("\\n" + nonce + "\\n").encode())
    exit(0)
_main()
"""


class SandboxUnavailable(AutoJudgeError):
    """No isolation mechanism: code tasks refuse to run (the message says what to install)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024  # address space per process
    output_bytes: int = 1_000_000  # per output stream, and per file written
    processes: int = 16  # processes and threads at once
    disk_mb: int = 64  # the writable tmpfs
    files: int = 128  # open file descriptors per process


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "ok" | "error" | "timeout" | "memory" | "output_limit"
    returncode: int | None
    stdout: str
    stderr: str
    completed: bool = False  # with run_python(..., prove_completion=True): the program ran to its end

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _reachable_by_anyone(path: str) -> bool:
    """Every folder down to ``path`` is searchable, and ``path`` runnable, by any user."""
    real = Path(os.path.realpath(path))
    return all(p.stat().st_mode & stat.S_IXOTH for p in (real, *real.parents))


@functools.cache
def _interpreter() -> tuple[str, tuple[str, ...]]:
    """(the Python the sandbox runs, the folders to bind for it). This Python where bwrap can
    reach it; started by root (bwrap then runs as an unprivileged uid) and installed where only
    root can reach it (a pyenv under /root), the system's python3: the programs need only the
    standard library."""
    if os.geteuid() != 0 or _reachable_by_anyone(sys.executable):
        prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(sys.executable))}
        return sys.executable, tuple(sorted(p for p in prefixes if not p.startswith(_SYSTEM_DIRS)))
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None or not _reachable_by_anyone(system):
        raise SandboxUnavailable(f"this Python ({sys.executable}) is not reachable by an unprivileged user, and "
                                 "there is no system python3 to run sandboxed code with: install one "
                                 "(apt-get install python3) or run from a Python every user can read")
    return system, ()


def _command(bwrap: str, code_dir: Path, limits: SandboxLimits, argv: list[str]) -> list[str]:
    mounts = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            mounts += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            mounts += ["--ro-bind", path, path]
    for path in (*_SYSTEM_FILES, *_interpreter()[1]):
        if os.path.exists(path):
            mounts += ["--ro-bind", path, path]
    return [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORK_DIR,
            "--setenv", "LANG", "C.UTF-8", *mounts, "--proc", "/proc",
            "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
            "--size", str(limits.disk_mb * 2**20), "--tmpfs", "/tmp", "--dir", WORK_DIR,
            "--ro-bind", str(code_dir), CODE_DIR, "--chdir", WORK_DIR, "--", *argv]


def _start(tools: tuple[str, str], code_dir: Path, limits: SandboxLimits, code: str) -> subprocess.Popen:
    """(bwrap, prlimit) running ``python -c code`` with the code folder at /code; started by root,
    as a fresh unprivileged uid (set by subprocess itself: no code runs between fork and exec)."""
    bwrap, prlimit = tools
    argv = [_interpreter()[0], "-I", "-B", "-c", code]
    memory, cpu = limits.memory_mb * 2**20, int(limits.timeout_s) + 1
    limit = [prlimit, f"--as={memory}", f"--cpu={cpu}:{cpu + 1}",  # SIGXCPU, then SIGKILL
             f"--fsize={limits.output_bytes}", "--core=0", f"--nofile={limits.files}", "--"]
    user = {}
    if os.geteuid() == 0:  # nobody outside the sandbox too
        uid = HOST_UIDS[0] + secrets.randbelow(HOST_UIDS[1])
        user = {"user": uid, "group": uid, "extra_groups": []}
    return subprocess.Popen([*limit, *_command(bwrap, code_dir, limits, argv)], env={"PATH": "/usr/bin:/bin"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **user)


@functools.cache
def _tools() -> tuple[str, str]:
    """(bwrap, prlimit), checked once by running a trivial sandbox; SandboxUnavailable if none works."""
    bwrap, prlimit = shutil.which("bwrap"), shutil.which("prlimit")
    if bwrap is None:
        raise SandboxUnavailable(f"code tasks run model-written programs, and the sandbox needs bubblewrap "
                                 f"(bwrap), which is not installed: {INSTALL_HINT}")
    if prlimit is None:
        raise SandboxUnavailable("the code sandbox needs prlimit (from util-linux), which is not installed")
    stdout, stderr, stopped, returncode = _run((bwrap, prlimit), "pass", SandboxLimits(timeout_s=30), None)
    if stopped or returncode != 0:
        problem = stderr.decode(errors="replace").strip() or f"{stopped or 'exit status'} {returncode}"
        raise SandboxUnavailable(f"bubblewrap cannot make a sandbox here ({bwrap}: {problem}): {INSTALL_HINT}")
    return bwrap, prlimit


def _read_capped(proc: subprocess.Popen, limits: SandboxLimits, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read stdout and stderr as they come, at most ``output_bytes`` each: (stdout, stderr,
    'timeout' | 'output_limit' | None). Returns when both pipes close or a limit is hit."""
    out = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    with selectors.DefaultSelector() as selector:
        for stream in out:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out[proc.stdout]), bytes(out[proc.stderr]), "timeout"
            for key, _ in selector.select(timeout=min(left, 1.0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = out[key.fileobj]
                buffer += chunk
                if len(buffer) > limits.output_bytes:
                    del buffer[limits.output_bytes:]
                    return bytes(out[proc.stdout]), bytes(out[proc.stderr]), "output_limit"
    return bytes(out[proc.stdout]), bytes(out[proc.stderr]), None


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), prove_completion: bool = False) -> SandboxResult:
    """Run ``code`` as a script in the sandbox and report how it ended. With
    ``prove_completion``, ``result.completed`` is True only if the script ran to its end (it
    did not exit early, by ``sys.exit``, ``os._exit`` or a signal, nor print a forged proof)."""
    nonce = secrets.token_hex(16) if prove_completion else None
    stdout, stderr, stopped, returncode = _run(_tools(), code, limits, nonce)
    completed = False
    if nonce:
        proof = f"\n{nonce}\n".encode()
        completed = stopped is None and returncode == 0 and stdout.endswith(proof)
        stdout = stdout[: -len(proof)] if completed else stdout
    return SandboxResult(_status(stopped, returncode, stderr), None if stopped == "timeout" else returncode,
                         stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"), completed)


def _run(tools: tuple[str, str], code: str, limits: SandboxLimits, nonce: str | None
         ) -> tuple[bytes, bytes, str | None, int]:
    """(stdout, stderr, 'timeout' | 'output_limit' | None, bwrap's exit status) of one sandboxed run."""
    with tempfile.TemporaryDirectory(prefix="autojudge-sandbox-") as tmp:
        code_dir = Path(tmp)
        _write_code(code_dir, code)
        # the runner counts too, and bwrap's pid-1 reaper
        runner = _RUNNER.format(processes=limits.processes + 1, path=f"{CODE_DIR}/main.py")
        proc = _start(tools, code_dir, limits, runner)
        try:
            proc.stdin.write(f"{nonce or ''}\n".encode())
            proc.stdin.close()
            deadline = time.monotonic() + limits.timeout_s
            stdout, stderr, stopped = _read_capped(proc, limits, deadline)
            if stopped is None:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    stopped = "timeout"
        finally:
            if proc.poll() is None:  # (once reaped, its pid may belong to someone else)
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap, and with it the sandbox's pid namespace
            returncode = proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    return stdout, stderr, stopped, returncode


def _write_code(code_dir: Path, code: str) -> None:
    """The program, readable by the sandbox's uid whatever this process's umask."""
    (code_dir / "main.py").write_text(code, encoding="utf-8")
    os.chmod(code_dir / "main.py", 0o644)
    os.chmod(code_dir, 0o755)


def _status(stopped: str | None, returncode: int, stderr: bytes) -> str:
    """bwrap exits with the code's status, or 128 + the signal that killed it (a program's own
    exit status above 128 reads as that signal: it is not "ok" either way)."""
    signalled = returncode - 128 if returncode > 128 else -returncode if returncode < 0 else 0
    if stopped:
        return stopped
    if returncode == 0:
        return "ok"
    if signalled == signal.SIGXCPU:
        return "timeout"
    if signalled == signal.SIGXFSZ or b"File too large" in stderr:
        return "output_limit"
    if b"MemoryError" in stderr or signalled == signal.SIGKILL:
        return "memory"
    return "error"
