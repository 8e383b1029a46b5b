"""What the vocabulary costs the tiny model: train-step tokens/s of the tiny preset's shape
(Llama-style, 4 layers, d=128, 4 heads, batch 16 x 128) at vocab 2,048 against 8,192, the two
interleaved step by step so that both see the same machine load, with the host's float32 matmul
peak measured in the same run.

At d=128 the output head (d x vocab) is the largest matmul of a token: 1.05M multiply-adds at
8,192 ids against 0.85M for the four blocks. Last line: `ratio=<2048 over 8192> peak_gflops=<p>`.

    .venv/bin/python benchmarks/vocab_cost.py [--steps 9]
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import ml_collections

from gpt_jax import configs
from gpt_jax import sharding as shd
from gpt_jax.flops import cpu_name, measure_matmul_peak
from gpt_jax.train.pretrain import build
from gpt_jax.train.state import create_train_state
from gpt_jax.train.synthetic import SyntheticTokens

SHAPE = dict(family="llama", max_seq_len=256, n_layers=4, d_model=128, n_heads=4,
             scan_layers=False)
BATCH, SEQ = 16, 128


def make_step(vocab: int):
    config = ml_collections.ConfigDict({
        "seed": 0, "model": configs.model_config(vocab_size=vocab, **SHAPE),
        "mesh": configs.mesh_config(1, 1, 1),
        "optim": configs.optim_config(learning_rate=1e-3, warmup_steps=0),
        "train": configs.train_config(batch_size=BATCH, seq_len=SEQ, total_steps=1000),
    })
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    built = build(config, mesh)
    box = {"state": create_train_state(built.init_params, built.tx, mesh, jax.random.key(0))[0]}
    data = SyntheticTokens(BATCH, SEQ, vocab)
    rng = jax.random.key(1)
    first = jax.device_put(next(data), built.batch_sharding)
    compiled = built.train_step.lower(box["state"], first, rng).compile()

    def step() -> float:
        batch = jax.device_put(next(data), built.batch_sharding)
        t0 = time.perf_counter()
        box["state"], metrics = compiled(box["state"], batch, rng)
        float(metrics["loss"])  # waits for the step
        return time.perf_counter() - t0

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=9)
    args = parser.parse_args()
    steps = {v: make_step(v) for v in (2048, 8192)}
    for fn in steps.values():  # warm-up
        fn()
    times = {v: [] for v in steps}
    for _ in range(args.steps):
        for v, fn in steps.items():
            times[v].append(fn())
    peak = measure_matmul_peak() / 1e9
    tps = {v: BATCH * SEQ / statistics.median(t) for v, t in times.items()}
    print(f"host: {cpu_name()}, float32 matmul peak {peak:.0f} GFLOP/s")
    for v, x in tps.items():
        print(f"vocab {v:5d}: {x:8.0f} tokens/s")
    print(f"ratio={tps[2048] / tps[8192]:.2f} peak_gflops={peak:.0f}")


if __name__ == "__main__":
    main()
