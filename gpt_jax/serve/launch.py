"""Start `python -m gpt_jax.serve` in a subprocess on a free loopback port and wait until it is
healthy: what tests, benchmarks and scripts that drive a real server need.

    with ServerProcess(workdir, "--slots=16") as server:
        openai.OpenAI(base_url=server.url + "/v1", api_key="none")...
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from gpt_jax.paths import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """The server on 127.0.0.1:<free port>, its output in `log` (default <workdir>/server_<port>.log).
    Raises RuntimeError with the log's tail if it exits or is not healthy within `timeout_s`."""

    def __init__(self, workdir: str | Path, *flags: str, timeout_s: float = 300.0,
                 log: str | Path | None = None):
        import httpx2 as httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log or Path(workdir) / f"server_{self.port}.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpt_jax.serve", f"--workdir={workdir}", f"--port={self.port}",
             *flags], cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"the server did not become healthy in {timeout_s:g} s:\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
