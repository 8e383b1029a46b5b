"""Model FLOPs and the matmul peak they are compared against (MFU).

Model FLOPs per token (training) = 6 * (all params incl. the output head, excl. position
embeddings) + 12 * layers * d_model * seq_len (attention scores and values, forward + backward).
The peak is measured, not looked up: a jit'd square matmul on the same device in the same
process, because CPUs here differ (AVX2 vs AVX-512) and only ratios measured together mean much.
"""
from __future__ import annotations

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model import GPTConfig


def train_flops_per_token(config: GPTConfig, seq_len: int) -> float:
    n = config.num_params(include_pos=False)
    return 6.0 * n + 12.0 * config.n_layers * config.d_model * seq_len


def _median_seconds(f, *args, repeats: int) -> float:
    f(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of a jit'd n^3 matmul on the default device (median of `repeats`)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    return 2.0 * n**3 / _median_seconds(jax.jit(lambda x, y: x @ y), a, b, repeats=repeats)


def measure_matvec_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s at which a jit'd float32 matrix-vector product streams a matrix far larger than the
    CPU caches: the ceiling for decoding one token at a time, which must read every weight."""
    rows = megabytes * 2**20 // (4 * 1024)
    m = jnp.ones((rows, 1024), jnp.float32)
    v = jnp.ones((1024,), jnp.float32)
    return 4.0 * rows * 1024 / _median_seconds(jax.jit(lambda a, x: a @ x), m, v, repeats=repeats)


def cpu_name() -> str:
    """The CPU model, printed beside every benchmark figure (they differ between machines)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
