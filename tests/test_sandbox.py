"""Model-written code runs isolated (bubblewrap), with time, memory, process, output and disk limits.

The attacks below are the ones a root-run sandbox of plain rlimits and a network namespace let
through; each must fail here, running as root as CI does.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from autojudge.tasks import sandbox
from autojudge.tasks.sandbox import SandboxLimits, SandboxUnavailable, run_python

LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=256, output_bytes=20_000, processes=8, disk_mb=8)


def test_plain_code_runs_in_its_own_temp_dir():
    result = run_python("import os\nprint(os.getcwd())\nopen('f.txt', 'w').write('x')", LIMITS)
    assert result.ok and "autojudge-sandbox-" in result.stdout


def test_infinite_loop_is_killed_at_the_time_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass", LIMITS)
    assert result.status == "timeout" and not result.ok
    assert time.monotonic() - start < 10


def test_memory_bomb_dies():
    result = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", LIMITS)
    assert result.status == "memory" and "allocated" not in result.stdout


def test_network_is_unreachable():
    code = ("import socket\n"
            "s = socket.create_connection(('93.184.216.34', 80), timeout=1)\n"
            "print('connected')")
    result = run_python(code, LIMITS)
    assert not result.ok and "connected" not in result.stdout
    assert "OSError" in result.stderr or "socket" in result.stderr


def test_output_is_capped():
    result = run_python("while True:\n    print('x' * 1000)", LIMITS)
    assert result.status == "output_limit"
    assert len(result.stdout) <= LIMITS.output_bytes


def _alive(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.parametrize("how", ["child", "setsid-grandchild"])
def test_processes_it_starts_die_with_it(how):
    marker = f"autojudge-test-survivor-{os.getpid()}-{how}"
    spawn = f"subprocess.Popen(['python3', '-c', 'import time; time.sleep(30)  # {marker}'])"
    if how == "setsid-grandchild":  # a double fork into a new session: no longer our child, nor our group
        code = ("import os, subprocess, sys\n"
                "if os.fork() == 0:\n"
                "    os.setsid()\n"
                f"    {spawn}\n"
                "    os._exit(0)\n"
                "os.wait()\nprint('spawned')")
    else:
        code = f"import subprocess\n{spawn}\nprint('spawned')"
    result = run_python(code, LIMITS)
    assert "spawned" in result.stdout
    time.sleep(0.3)
    assert _alive(marker) == []


def test_another_processs_environment_is_out_of_reach(monkeypatch):
    secret = f"autojudge-secret-{os.getpid()}"
    monkeypatch.setenv("AUTOJUDGE_TEST_SECRET", secret)
    code = (f"import os\nfound = []\n"
            f"for pid in [*os.listdir('/proc'), '{os.getpid()}', '{os.getppid()}', '1']:\n"
            "    try:\n"
            "        found.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except (OSError, ValueError):\n"
            "        pass\n"
            "print(repr(b''.join(found)))\nprint(repr(os.environ))")
    result = run_python(code, LIMITS)
    assert result.ok and secret not in result.stdout


def test_nothing_outside_its_temp_dir_can_be_written(tmp_path):
    targets = [tmp_path / "written.txt", Path.cwd() / "autojudge-sandbox-escape.txt", Path("/tmp/autojudge-escape.txt")]
    code = (f"targets = {[str(t) for t in targets]!r} + ['/usr/autojudge-escape.txt', '/code/main.py']\n"
            "for path in targets:\n"
            "    try:\n"
            "        open(path, 'w').write('escaped')\n"
            "        print('wrote', path)\n"
            "    except OSError as exc:\n"
            "        print('refused', path, type(exc).__name__)")
    result = run_python(code, LIMITS)
    assert result.ok and "wrote /code/main.py" not in result.stdout and "wrote /usr" not in result.stdout
    assert not any(t.exists() for t in targets)


def test_the_parents_proc_entries_are_unreachable(tmp_path):
    """The parent's memory, working directory and namespaces (/proc/<pid>/mem, cwd, ns/net)."""
    keep = Path.cwd() / ".autojudge-sandbox-keep"
    keep.write_text("still here")
    try:
        pid = os.getpid()
        code = (f"import os\n"
                f"for action in ('open(\"/proc/{pid}/mem\", \"r+b\")', 'os.listdir(\"/proc/{pid}/cwd\")',"
                f" 'os.remove(\"/proc/{pid}/cwd/{keep.name}\")', 'open(\"/proc/{pid}/ns/net\")'):\n"
                "    try:\n"
                "        eval(action)\n"
                "        print('did', action)\n"
                "    except OSError as exc:\n"
                "        print('refused', action, type(exc).__name__)")
        result = run_python(code, LIMITS)
        assert result.ok and "did" not in result.stdout, result.stdout
        assert keep.read_text() == "still here"
    finally:
        keep.unlink(missing_ok=True)


def test_setns_back_into_the_host_network_fails_and_loopback_is_not_reached():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    code = ("import ctypes, os, socket\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"for pid in ['{os.getpid()}', '{os.getppid()}', '1', 'self']:\n"
            "    try:\n"
            "        fd = os.open(f'/proc/{pid}/ns/net', os.O_RDONLY)\n"
            "        print('setns', pid, libc.setns(fd, 0x40000000), ctypes.get_errno())\n"
            "    except OSError as exc:\n"
            "        print('no ns', pid, exc)\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('CONNECTED')\n"
            "except OSError as exc:\n"
            "    print('refused', exc)")
    try:
        result = run_python(code, LIMITS)
        try:
            conn, _ = listener.accept()
            conn.close()
            reached = True
        except TimeoutError:
            reached = False
    finally:
        listener.close()
    assert "CONNECTED" not in result.stdout and not reached, result.stdout


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_files_named_like_the_output_do_not_hang_or_redirect_the_parent(kind):
    """Output comes through pipes the parent holds: a FIFO or a symlink named .stdout/.stderr
    (where the old sandbox reopened its output files) changes nothing."""
    make = "os.mkfifo(name)" if kind == "fifo" else "os.symlink('/etc/passwd', name)"
    code = ("import os\n"
            "for name in ('.stdout', '.stderr', '/code/.stdout'):\n"
            "    try:\n"
            f"        {make}\n"
            "    except OSError:\n"
            "        pass\n"
            "print('made')")
    start = time.monotonic()
    result = run_python(code, LIMITS)
    assert result.ok and result.stdout == "made\n"
    assert time.monotonic() - start < LIMITS.timeout_s + 5


def test_processes_and_memory_are_bounded_across_children():
    """Children each take 150 MB; with 8 processes of 256 MB allowed, at most 8 exist at once,
    so all of them together stay under 8 x 256 MB."""
    code = ("import os, time\n"
            "started = 0\n"
            "for _ in range(64):\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        break\n"
            "    if pid == 0:\n"
            "        block = bytearray(150 * 2**20)\n"
            "        time.sleep(5)\n"
            "        os._exit(0)\n"
            "    started += 1\n"
            "print(started)")
    result = run_python(code, LIMITS)
    assert result.stdout.strip().isdigit(), result.stderr
    assert 0 < int(result.stdout) < LIMITS.processes


def test_disk_is_bounded():
    code = ("data = b'x' * 2**20\n"
            "written = 0\n"
            "for i in range(64):\n"
            "    try:\n"
            "        open(f'f{i}', 'wb').write(data)\n"
            "        written += 1\n"
            "    except OSError:\n"
            "        break\n"
            "print(written)")
    result = run_python(code, SandboxLimits(timeout_s=5, memory_mb=256, output_bytes=2**21, disk_mb=8))
    assert result.ok and int(result.stdout) <= 8


@pytest.mark.parametrize("code, completed", [
    ("print('tests passed')", True),
    ("import sys\nprint('tests passed')\nsys.exit(0)", False),
    ("import os\nprint('tests passed', flush=True)\nos._exit(0)", False),
    ("raise SystemExit", False),
    ("print('\\n0123456789abcdef0123456789abcdef')", True),  # a forged-looking proof is plain output
])
def test_completion_is_proven_only_by_running_to_the_end(code, completed):
    result = run_python(code, LIMITS, prove_completion=True)
    assert result.completed is completed
    assert result.stdout.startswith(("tests passed", "\n0123")) or not result.stdout


def test_without_bubblewrap_code_tasks_refuse_to_run(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._tools.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="needs bubblewrap.*apt-get install bubblewrap"):
            run_python("print(1)", LIMITS)
    finally:
        sandbox._tools.cache_clear()


def test_dev_shared_memory_and_memfds_are_no_way_around_the_limits():
    """/dev is read-only, /dev/shm is 1 MB, and memfds (not counted by RLIMIT_AS) are bounded by
    the open-file limit times the file-size limit."""
    code = ("import os\n"
            "for path in ('/dev/x', '/dev/shm/big'):\n"
            "    try:\n"
            "        open(path, 'wb').write(b'x' * 2**21)\n"
            "        print('wrote', path)\n"
            "    except OSError as exc:\n"
            "        print('refused', path, exc.errno)\n"
            "held = []\n"
            "for _ in range(2000):\n"
            "    try:\n"
            "        fd = os.memfd_create('m')\n"
            "        os.write(fd, b'x' * 2**20)\n"
            "        held.append(fd)\n"
            "    except OSError:\n"
            "        break\n"
            "print('memfds', len(held))")
    limits = SandboxLimits(timeout_s=5, memory_mb=256, output_bytes=2**20, files=32)
    result = run_python(code, limits)
    assert "wrote" not in result.stdout, result.stdout
    assert int(result.stdout.split("memfds ")[1]) < limits.files  # at most 32 MB held this way


def test_a_restrictive_umask_does_not_make_every_program_fail():
    old = os.umask(0o077)
    try:
        result = run_python("print('readable')", LIMITS)
    finally:
        os.umask(old)
    assert result.ok and result.stdout == "readable\n"


def test_a_program_that_exits_0_is_ok_whatever_it_logged():
    result = run_python("import sys\nprint('caught a MemoryError, recovered', file=sys.stderr)", LIMITS)
    assert result.status == "ok"
