"""Pretraining throughput and MFU of an experiment config on the default device (GPU or CPU).

Builds the config's model, optimizer and jit'd train step exactly as `gpt_jax.main` does, feeds
synthetic tokens of the config's (batch, seq_len) (so it needs no dataset: a GPU machine can run
it with only this repository), and times `--steps` steps after two warm-up steps. MFU is model
FLOPs/s (`flops.train_flops_per_token`) over the peak of a jit'd square matmul in the config's
compute dtype, measured in the same run on the same device; on an H100/H200 it also prints MFU
against the datasheet's dense bf16 figure (989 TFLOP/s). Last line:
`tokens_per_s=<x> mfu=<measured-peak fraction> step_ms=<median> compile_s=<s>`.

    python benchmarks/train_mfu.py --config experiments/configs/gpt2_124m.py --steps 50
    python benchmarks/train_mfu.py --config experiments/configs/pretrain_tiny.py --steps 20 \
        --set train.batch_size=8
"""
from __future__ import annotations

import argparse
import ast
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections

from gpt_jax import sharding as shd
from gpt_jax import sweep
from gpt_jax.flops import cpu_name, measure_matmul_peak, train_flops_per_token
from gpt_jax.model import GPTConfig
from gpt_jax.train.pretrain import build
from gpt_jax.train.state import create_train_state
from gpt_jax.train.synthetic import SyntheticTokens

DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12}  # dense, SXM


def load_config(path: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config file (a recipe: its pretraining stage) with `key=value` overrides applied
    through `sweep.load_config` (an unknown key is a KeyError), on synthetic tokens."""
    values = {}
    for item in overrides:
        key, value = item.split("=", 1)
        try:
            value = ast.literal_eval(value)  # 16, 1e-3, False; anything else stays a string
        except (ValueError, SyntaxError):
            pass
        values[f"config.{key}"] = value
    config = sweep.load_config(path, values)
    if "pretrain" in config and "model" not in config:
        config = config.pretrain
    config.train.data_source = "synthetic"
    return config


def device_name() -> str:
    device = jax.devices()[0]
    return cpu_name() if device.platform == "cpu" else device.device_kind


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="experiments/configs/gpt2_124m.py")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], help="key=value config override")
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    tcfg = config.train
    mesh = shd.mesh_from_config(config.mesh)
    built = build(config, mesh)
    state = create_train_state(built.init_params, built.tx, mesh, jax.random.key(config.seed))[0]
    data = SyntheticTokens(tcfg.batch_size, tcfg.seq_len, built.model_config.vocab_size)
    rng = jax.random.key(1)
    first = jax.device_put(next(data), built.batch_sharding)
    t0 = time.perf_counter()
    step = built.train_step.lower(state, first, rng).compile()
    compile_s = time.perf_counter() - t0

    times, losses = [], []
    for i in range(args.steps + 2):
        batch = jax.device_put(next(data), built.batch_sharding)
        t0 = time.perf_counter()
        state, metrics = step(state, batch, rng)
        losses.append(float(metrics["loss"]))  # waits for the step
        if i >= 2:
            times.append(time.perf_counter() - t0)
    dtype = jnp.dtype(config.model.get("dtype", "float32"))
    peak = measure_matmul_peak(n=8192 if jax.devices()[0].platform == "gpu" else 2048, dtype=dtype)
    step_s = statistics.median(times)
    tokens = tcfg.batch_size * tcfg.seq_len
    flops = train_flops_per_token(GPTConfig.from_config(config.model), tcfg.seq_len) * tokens / step_s
    print(f"device: {device_name()} x{jax.device_count()}, jax {jax.__version__}")
    print(f"config: {args.config} {' '.join(args.set)}; batch {tcfg.batch_size} x {tcfg.seq_len}, "
          f"grad accum {tcfg.grad_accum_steps}, {built.model_config.num_params() / 1e6:.1f}M params, "
          f"compute {dtype.name}")
    print(f"loss: step 1 {losses[0]:.3f} -> step {len(losses)} {losses[-1]:.3f}")
    print(f"{dtype.name} matmul peak (measured): {peak / 1e12:.1f} TFLOP/s")
    print(f"model: {flops / 1e12:.1f} TFLOP/s, {tokens / step_s:,.0f} tokens/s, "
          f"step {step_s * 1e3:.1f} ms (median of {len(times)})")
    for name, sheet in DATASHEET_BF16.items():
        if name in device_name():
            print(f"MFU vs datasheet dense bf16 ({sheet / 1e12:.0f} TFLOP/s): {flops / sheet:.3f}")
    print(f"tokens_per_s={tokens / step_s:.0f} mfu={flops / peak:.3f} step_ms={step_s * 1e3:.1f} "
          f"compile_s={compile_s:.1f}")


if __name__ == "__main__":
    main()
