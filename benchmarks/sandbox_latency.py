"""Latency of the Python sandbox (`gpt_jax.tools.sandbox.run_python`) against its peer, a plain
`subprocess.run([python, "-I", "-c", code])` of the same interpreter with no isolation, measured
interleaved in the same run (so a busy host slows both alike).

Prints the median and p90 wall time of `print(1)` for each, the sandbox's overhead over the peer
(the namespaces, the read-only remount and tmpfs mounts, setpriv and prlimit), and the
`--target` (the issue's 300 ms) as pass/fail. Last line:
`sandbox_ms=<median> plain_ms=<median> ratio=<sandbox/plain>`.

    .venv/bin/python benchmarks/sandbox_latency.py [--runs 30]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax.tools.sandbox import _interpreter, run_python  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--target", type=float, default=300.0, help="ms, median of print(1)")
    args = parser.parse_args()
    python = _interpreter()
    sandboxed, plain = [], []
    run_python("print(1)")  # warm the page cache
    for _ in range(args.runs):
        start = time.perf_counter()
        r = run_python("print(1)")
        sandboxed.append((time.perf_counter() - start) * 1e3)
        assert r.stdout == "1\n", r
        start = time.perf_counter()
        subprocess.run([python, "-I", "-c", "print(1)"], check=True, capture_output=True)
        plain.append((time.perf_counter() - start) * 1e3)
    for name, ms in (("sandbox", sandboxed), ("plain subprocess", plain)):
        p90 = statistics.quantiles(ms, n=10)[-1]
        print(f"{name:>17}: median {statistics.median(ms):6.1f} ms, p90 {p90:6.1f} ms "
              f"({args.runs} runs of print(1), {python})")
    med, peer = statistics.median(sandboxed), statistics.median(plain)
    verdict = "met" if med < args.target else "MISSED"
    print(f"overhead {med - peer:.1f} ms; target median < {args.target:.0f} ms: {verdict}")
    print(f"sandbox_ms={med:.1f} plain_ms={peer:.1f} ratio={med / peer:.2f}")


if __name__ == "__main__":
    main()
