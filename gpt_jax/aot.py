"""Compile-only planning: lower + compile a config's train_step on its mesh, allocate nothing.

With abstract inputs (ShapeDtypeStruct carrying shardings) XLA compiles the real sharded program
and `compiled.memory_analysis()` reports per-device bytes, so a config for hundreds of devices can
be checked on one CPU host with simulated devices (`--simulate_devices=N`).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from gpt_jax import sharding as shd
from gpt_jax.checkpoint import abstract_with_shardings
from gpt_jax.train.pretrain import build

GIB = 1024**3


def compile_plan(config) -> dict:
    mesh = shd.mesh_from_config(config.mesh)
    built = build(config, mesh)
    tcfg = config.train
    state = abstract_with_shardings(built.abstract_state, built.state_shardings)
    batch = {"tokens": jax.ShapeDtypeStruct((tcfg.batch_size, tcfg.seq_len + 1), jnp.int32,
                                            sharding=built.batch_sharding)}
    t0 = time.perf_counter()
    lowered = built.train_step.lower(state, batch, jax.random.key(0))
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    per_device = {
        "arguments_gib": mem.argument_size_in_bytes / GIB,
        "outputs_gib": mem.output_size_in_bytes / GIB,
        "aliased_gib": mem.alias_size_in_bytes / GIB,
        "temp_gib": mem.temp_size_in_bytes / GIB,
    }
    per_device["total_gib"] = (per_device["arguments_gib"] + per_device["outputs_gib"]
                               - per_device["aliased_gib"] + per_device["temp_gib"])
    return {
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "num_params": built.model_config.num_params(),
        "global_batch": tcfg.batch_size,
        "seq_len": tcfg.seq_len,
        "grad_accum_steps": tcfg.grad_accum_steps,
        "remat_policy": built.model_config.remat_policy,
        "compute_dtype": built.model_config.dtype,
        "compile_seconds": seconds,
        "per_device_memory": per_device,
    }
