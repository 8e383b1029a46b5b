"""A sandboxed Python tool: `run_python(code)` runs untrusted code (a model's tool call) in a fresh,
locked-down subprocess and returns what it printed, never raising for bad code.

Why its own process and namespaces: the code comes from a model's reply, so it is hostile text. A
`subprocess` alone would let it read the caller's environment (API keys), reach the network, write
anywhere the caller can, fork-bomb the host or kill the server. Each layer below closes one of
those, and each has its own test (tests/test_sandbox.py):

- **namespaces** (util-linux `unshare`): `--net`, no network at all, not even loopback; `--pid
  --fork --kill-child --mount-proc`, its own process tree: it cannot see or signal the caller, and
  when its first process dies every process inside dies with it; `--mount`, a private mount
  table in which `/` is remounted read-only and fresh size-limited tmpfs cover `/tmp`, `/var/tmp`
  and `/dev/shm` (its working directory is `/tmp/work` on that tmpfs, gone when it ends);
- **an unprivileged identity**: it runs as `nobody` (`setpriv`, no supplementary groups, no
  capabilities, no new privileges), so what is still writable (e.g. other mounts) is not its;
- **rlimits** (`prlimit`): address space `memory_mb`, CPU seconds, processes, file size, open files,
  no core files;
- **an empty environment** (and `python -I`), its own session (`setsid`): the caller's
  variables are invisible and the whole group can be killed at once;
- **a wall-clock timeout**: the process group is SIGKILLed (and with it the pid namespace);
- **capped output**: stdout and stderr are read by threads and kept up to `OUTPUT_CAP` bytes each,
  the rest counted and dropped ("[... N bytes truncated]").

Limits, plainly: this is namespaces + rlimits on the host kernel, not a VM or gVisor: a kernel bug
is an escape. It needs root (or equivalent capabilities) to create the namespaces. Where
`unshare`, `setpriv` or `prlimit` is missing or the namespaces cannot be made, `run_python`
raises `SandboxUnavailable`: it never falls back to an unsandboxed run.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

OUTPUT_CAP = 64 * 1024       # bytes kept of stdout and of stderr each
NOBODY = 65534               # uid / gid the code runs as
MAX_PROCESSES = 32           # RLIMIT_NPROC (per uid: a fork bomb stops here)
MAX_FILE_BYTES = 8 << 20     # RLIMIT_FSIZE
TMPFS_SIZE = "16m"           # each private tmpfs (/tmp, /var/tmp, /dev/shm)
READY = b"\x00sandbox-ready\x00"  # written by the namespace setup before the code runs


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be built on this host (missing tools, no namespaces): the code is not
    run at all."""


@dataclasses.dataclass
class PythonResult:
    stdout: str
    error: str | None  # the traceback / reason when the run failed, else None
    timed_out: bool
    exit_code: int | None
    seconds: float

    def as_tool_result(self) -> str:
        """What the model reads back: its output, then the error (if any) as "error: ..."."""
        text = self.stdout
        if self.error:
            last = self.error.strip().splitlines()[-1] if self.error.strip() else self.error
            text = (text + ("\n" if text and not text.endswith("\n") else "")
                    + f"error: {last}")
        return text.strip()


def _tools() -> dict[str, str]:
    found = {name: shutil.which(name) for name in ("unshare", "setpriv", "prlimit", "env")}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise SandboxUnavailable(f"the Python sandbox needs {', '.join(missing)} (util-linux); "
                                 "refusing to run code unsandboxed")
    return found


def _world_executable(path: str) -> bool:
    """Whether `nobody` can run `path`: every folder on the way o+x, the file o+rx."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    try:
        for i in range(2, len(parts)):
            if not os.stat(os.sep.join(parts[:i])).st_mode & 0o001:
                return False
        return os.stat(path).st_mode & 0o005 == 0o005
    except OSError:
        return False


def _interpreter() -> str:
    """A Python binary `nobody` can run: this one's base interpreter when it is reachable (a
    virtualenv's or pyenv's folder often is not), else the system's. The code gets the standard
    library only (`python -I`, no site-packages of ours)."""
    candidates = [getattr(sys, "_base_executable", None), sys.executable,
                  shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")]
    for c in candidates:
        if c and _world_executable(c):
            return os.path.realpath(c)
    raise SandboxUnavailable(f"no Python interpreter the sandbox user can run among {candidates}")


def _command(timeout_s: float, memory_mb: int) -> list[str]:
    t = _tools()
    cpu = max(1, math.ceil(timeout_s)) + 1
    # Inside the new namespaces, as root of them: lock the file system down, then drop to nobody.
    setup = (
        "set -e; mount -o remount,bind,ro /; "
        "for d in /tmp /var/tmp /dev/shm; do [ -d $d ] && "
        f"mount -t tmpfs -o size={TMPFS_SIZE},mode=1777,nosuid,nodev tmpfs $d; done; "
        f"mkdir /tmp/work; cat > /tmp/work/main.py; chown -R {NOBODY}:{NOBODY} /tmp/work; "
        "cd /tmp/work; printf '\\000sandbox-ready\\000' >&2; "
        f"exec {t['setpriv']} --reuid={NOBODY} --regid={NOBODY} --clear-groups "
        "--inh-caps=-all --bounding-set=-all --no-new-privs "
        f"{t['prlimit']} --as={memory_mb << 20} --cpu={cpu} --nproc={MAX_PROCESSES} "
        f"--fsize={MAX_FILE_BYTES} --nofile=64 --core=0 -- "
        f"{t['env']} -i {_interpreter()} -I -B main.py </dev/null"
    )
    return [t["unshare"], "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount",
            "--propagation", "private", "--", "/bin/sh", "-c", setup]


class _Reader(threading.Thread):
    """Reads a pipe to its end, keeping the first `cap` bytes and counting the rest."""

    def __init__(self, pipe, cap: int):
        super().__init__(daemon=True)
        self.pipe, self.cap, self.kept, self.dropped = pipe, cap, bytearray(), 0

    def run(self):
        while True:
            chunk = self.pipe.read1(65536)  # whatever is there, up to 64 KB
            if not chunk:
                return
            room = self.cap - len(self.kept)
            self.kept += chunk[:max(room, 0)]
            self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        out = bytes(self.kept).decode("utf-8", errors="replace")
        if self.dropped:
            out += f"\n[... {self.dropped} bytes truncated]"
        return out


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_python(code: str, *, timeout_s: float = 2.0, memory_mb: int = 256) -> PythonResult:
    """Runs `code` in the sandbox (module docstring) and returns its stdout, its error (traceback,
    timeout, killed by a signal) and whether it timed out. Raises only `SandboxUnavailable`."""
    start = time.perf_counter()
    proc = subprocess.Popen(_command(timeout_s, memory_mb), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={},
                            start_new_session=True, close_fds=True, cwd="/")
    out, err = _Reader(proc.stdout, OUTPUT_CAP), _Reader(proc.stderr, OUTPUT_CAP + len(READY))
    out.start(), err.start()
    try:
        proc.stdin.write(code.encode("utf-8", errors="replace"))
        proc.stdin.close()
    except BrokenPipeError:
        pass
    timed_out = False
    try:
        proc.wait(timeout=timeout_s + 0.5)  # + the namespace setup (~10-50 ms)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc)  # whatever is left of the group (a timeout, or children left behind)
        proc.wait()
    out.join(timeout=2.0)
    err.join(timeout=2.0)
    seconds = time.perf_counter() - start
    stderr = err.text()
    if READY.decode() not in stderr:
        raise SandboxUnavailable("the sandbox's namespaces could not be set up (unshare needs "
                                 f"root or CAP_SYS_ADMIN): {stderr.strip()[-300:]}")
    stderr = stderr.split(READY.decode(), 1)[1]
    code_rc = proc.returncode
    error = None
    if timed_out:
        error = f"TimeoutError: timed out after {timeout_s:g} s"
    elif code_rc != 0:
        error = stderr.strip() or _signal_text(code_rc)
    return PythonResult(out.text(), error, timed_out, code_rc, seconds)


def _signal_text(rc: int) -> str:
    if rc < 0 or rc > 128:
        sig = -rc if rc < 0 else rc - 128
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (CPU time limit)" if name == "SIGXCPU" else ""
        return f"killed by {name}{hint}"
    return f"exit code {rc}"


def python_tool(code: str) -> str:
    """The engine's tool callable (`engine_tools`): the code's output as the tool result."""
    return run_python(code).as_tool_result()
