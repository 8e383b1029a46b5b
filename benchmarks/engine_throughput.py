"""Decode throughput of our engine (`sampling.generate`) for an experiment config's model, on the
default device (GPU or CPU), against the hardware bound measured in the same run.

Random-init weights of the config's shape and dtypes, a random `--prompt`-token prompt per row,
greedy, exactly `--new` new tokens (no stop id). Per batch size: new tokens/s (median of
`--runs` runs after a compile run) and time to first token (a 1-token generate). Bounds, measured
on the same device in the same process: at batch 1 each step must stream every weight once
(parameter bytes / measured copy bandwidth); at batch B it must do 2 FLOPs per weight per row
(/ the measured matmul peak in the compute dtype). Needs no dataset or tokenizer. Last line:
`b1_tok_s=<x> b1_of_bound=<fraction> bmax_tok_s=<y> bmax_of_bound=<fraction>`.

    python benchmarks/engine_throughput.py --config experiments/configs/gpt2_124m.py --batch 1 64
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from gpt_jax import sampling
from gpt_jax.flops import measure_matmul_peak
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.sampling import SamplingConfig

def measure_copy_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes/s (read + write) of a jit'd elementwise pass over a buffer far larger than any cache."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001)
    f(x).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * x.nbytes / statistics.median(times)


def main() -> None:
    from train_mfu import device_name, load_config  # benchmarks/ on sys.path when run as a script

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="experiments/configs/gpt2_124m.py")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    config = GPTConfig.from_config(load_config(args.config, []).model)
    params = nn.unbox(GPT(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    config, params = sampling.unstack_layers(config, params)
    weights = config.num_params(include_pos=False)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    compute = jnp.dtype(config.dtype)
    rng = np.random.default_rng(0)
    gpu = jax.devices()[0].platform == "gpu"
    bandwidth = measure_copy_bandwidth(1024 if gpu else 256)
    peak = measure_matmul_peak(n=8192 if gpu else 2048, dtype=compute)
    print(f"device: {device_name()}, jax {jax.__version__}; model {config.family} "
          f"{config.n_layers}x{config.d_model}, {weights / 1e6:.1f}M weights ({param_bytes / 2**20:.0f} MiB "
          f"stored), compute {compute.name}; prompt {args.prompt}, {args.new} new tokens, greedy")
    print(f"measured: copy {bandwidth / 1e9:.0f} GB/s, {compute.name} matmul {peak / 1e12:.2f} TFLOP/s")
    last = {}
    for b in args.batch:
        prompts = [rng.integers(1, config.vocab_size, args.prompt).tolist() for _ in range(b)]

        def run(n: int):
            return sampling.generate(params, config, prompts,
                                     SamplingConfig(temperature=0, max_new_tokens=n)).tokens

        run(args.new), run(1)  # compile both
        times, ttft = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = run(args.new)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run(1)
            ttft.append(time.perf_counter() - t0)
        assert out.shape == (b, args.new), out.shape
        tok_s = b * args.new / statistics.median(times)
        bound = min(bandwidth / param_bytes * b, peak / (2 * weights))
        last[b] = (tok_s, tok_s / bound)
        print(f"batch {b:4d}: {tok_s:10.0f} new tokens/s ({tok_s / b:7.1f} per row), TTFT "
              f"{statistics.median(ttft) * 1e3:7.1f} ms; bound {bound:10.0f} tok/s "
              f"(min of weights streamed per step, matmul peak): at {tok_s / bound:.0%} of it", flush=True)
    first, big = args.batch[0], args.batch[-1]
    print(f"b{first}_tok_s={last[first][0]:.0f} b{first}_of_bound={last[first][1]:.3f} "
          f"b{big}_tok_s={last[big][0]:.0f} b{big}_of_bound={last[big][1]:.3f}")


if __name__ == "__main__":
    main()
