"""Model-written code runs in a subprocess with time, memory, output and network limits."""

import time

from autojudge.tasks.sandbox import SandboxLimits, run_python

LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=256, output_bytes=20_000)


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


def test_processes_it_starts_are_killed():
    code = "import subprocess\np = subprocess.Popen(['sleep', '30'])\nprint(p.pid)"
    result = run_python(code, LIMITS)
    pid = int(result.stdout)
    time.sleep(0.2)
    import os
    try:
        os.kill(pid, 0)
        alive = open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive
