"""The Python sandbox (`gpt_jax.tools.sandbox`): one test per attack, plus results and refusal.

Every test runs real code in the real sandbox (namespaces need root here, as on CI); a test that
cannot build the sandbox fails rather than skips, because silently skipping would hide exactly
the condition the tool must refuse in.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from gpt_jax.tools import sandbox
from gpt_jax.tools.sandbox import OUTPUT_CAP, SandboxUnavailable, run_python


def test_output_errors_and_exit_codes_come_back_without_raising():
    ok = run_python("print(6 * 7)\nprint('二')")
    assert (ok.stdout, ok.error, ok.timed_out, ok.exit_code) == ("42\n二\n", None, False, 0)
    bad = run_python("def f(:\n  pass")
    assert "SyntaxError" in bad.error and bad.exit_code == 1 and not bad.timed_out
    boom = run_python("print('before')\n1 / 0")
    assert boom.stdout == "before\n" and boom.error.endswith("ZeroDivisionError: division by zero")
    assert boom.as_tool_result() == "before\nerror: ZeroDivisionError: division by zero"
    assert run_python("import sys; sys.exit(3)").exit_code == 3


def test_no_network_not_even_a_listening_loopback_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        r = run_python(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), "
                       "timeout=1)\nprint('connected')")
        assert "connected" not in r.stdout and "OSError" in r.error, r
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever reached the port
    finally:
        server.close()
    assert "lo" in run_python("import socket; print(socket.if_nameindex())").stdout  # a net ns
    # of its own: only a loopback interface, and that one down


def test_writes_outside_its_temporary_directory_do_not_land():
    # a folder the sandbox user could write to on the host (mode 777, outside /tmp), and a name in
    # the host's /tmp: neither gets the file; its own working directory works
    host_dir = Path(tempfile.mkdtemp(dir=Path(__file__).resolve().parent))
    host_tmp = Path(tempfile.gettempdir()) / f"sandbox-probe-{uuid.uuid4().hex}"
    try:
        os.chmod(host_dir, 0o777)
        code = (f"for p in [{str(host_dir / 'x.txt')!r}, {str(host_tmp)!r}, '/etc/x.txt']:\n"
                "    try:\n        open(p, 'w').write('pwned')\n        print('wrote', p)\n"
                "    except OSError as e:\n        print('refused', p, type(e).__name__)\n"
                "open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())")
        r = run_python(code)
        assert r.error is None, r
        assert f"refused {host_dir / 'x.txt'}" in r.stdout and "refused /etc/x.txt" in r.stdout
        assert r.stdout.endswith("ok\n")
        assert not (host_dir / "x.txt").exists() and not host_tmp.exists()
        assert not Path("/etc/x.txt").exists()
    finally:
        host_tmp.unlink(missing_ok=True)
        (host_dir / "x.txt").unlink(missing_ok=True)
        host_dir.rmdir()


def test_the_parents_environment_is_invisible(monkeypatch):
    monkeypatch.setenv("GPT_JAX_SANDBOX_SECRET", "hunter2")
    r = run_python("import os\nprint(sorted(os.environ))\n"
                   "print(open('/proc/self/environ', 'rb').read())\nprint(os.getuid())")
    assert "hunter2" not in r.stdout and "GPT_JAX_SANDBOX_SECRET" not in r.stdout
    assert r.stdout.strip().endswith(str(sandbox.NOBODY))


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_busy_loops_and_sleeps_time_out(code):
    start = time.perf_counter()
    r = run_python(code, timeout_s=1.0)
    assert r.timed_out and r.error.startswith("TimeoutError"), r
    assert time.perf_counter() - start < 5.0


def test_a_2_gib_allocation_fails():
    r = run_python("x = bytearray(2 << 30)\nprint('allocated')", memory_mb=256)
    assert "allocated" not in r.stdout and "MemoryError" in r.error, r
    assert run_python("x = bytearray(64 << 20)\nprint(len(x))", memory_mb=256).stdout == "67108864\n"


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


def test_a_fork_bomb_is_contained_and_cleaned_up():
    before = set(_processes_of(sandbox.NOBODY))
    code = ("import os, time\nn = 0\nfor _ in range(10_000):\n    try:\n        if os.fork() == 0:\n"
            "            time.sleep(60)\n            os._exit(0)\n        n += 1\n"
            "    except OSError:\n        break\nprint('forked', n, flush=True)\ntime.sleep(60)")
    r = run_python(code, timeout_s=1.5)
    assert r.timed_out
    forked = int(r.stdout.split()[1]) if r.stdout.startswith("forked") else 0
    assert 0 < forked < sandbox.MAX_PROCESSES  # the process limit stopped it
    deadline = time.monotonic() + 5.0  # killed at once; the kernel reaps them in a moment
    while not set(_processes_of(sandbox.NOBODY)) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    left = set(_processes_of(sandbox.NOBODY)) - before
    assert not left, [Path(f"/proc/{p}/status").read_text()[:200] for p in left]


def test_killing_its_parent_has_no_effect():
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        code = (f"import os, signal\nfor pid in (os.getppid(), {os.getpid()}, {sentinel.pid}, 0, -1):\n"
                "    try:\n        os.kill(pid, signal.SIGKILL)\n        print('sent', pid)\n"
                "    except OSError as e:\n        print('refused', pid, type(e).__name__)")
        r = run_python(code)
        assert sentinel.poll() is None  # still running
        assert f"refused {sentinel.pid}" in r.stdout and f"refused {os.getpid()}" in r.stdout, r
    finally:
        sentinel.kill()
        sentinel.wait()


def test_an_output_flood_is_capped():
    r = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 4096)", timeout_s=1.0)
    assert r.timed_out
    kept, marker = r.stdout.split("\n[... ")
    assert len(kept) == OUTPUT_CAP and set(kept) == {"x"} and marker.endswith(" bytes truncated]")


def test_refuses_to_run_without_its_tools(monkeypatch):
    real_which = sandbox.shutil.which
    monkeypatch.setattr(sandbox.shutil, "which",
                        lambda name, **kw: None if name == "unshare" else real_which(name, **kw))
    with pytest.raises(SandboxUnavailable, match="unshare"):
        run_python("print(1)")


def test_refuses_when_the_namespaces_cannot_be_made(monkeypatch):
    # a stand-in `unshare` that fails the way an unprivileged one does
    fake = Path(tempfile.mkdtemp()) / "unshare"
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    real_which = sandbox.shutil.which
    monkeypatch.setattr(sandbox.shutil, "which",
                        lambda name, **kw: str(fake) if name == "unshare" else real_which(name, **kw))
    try:
        with pytest.raises(SandboxUnavailable, match="Operation not permitted"):
            run_python("print(1)")
    finally:
        fake.unlink()
        fake.parent.rmdir()
