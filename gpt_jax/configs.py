"""Builders for the config sections every stage shares (model, mesh, optimizer, loop).

Experiment files under experiments/configs/ compose these into one locked ml_collections
ConfigDict; any key can be overridden on the command line as `--config.a.b=value`, and an
unknown key is rejected with its name.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from gpt_jax.model import GPTConfig


def model_config(**overrides) -> ml_collections.ConfigDict:
    """All GPTConfig fields, defaults from the dataclass, then `overrides`."""
    values = {f.name: f.default for f in dataclasses.fields(GPTConfig)}
    unknown = set(overrides) - set(values)
    if unknown:
        raise KeyError(f"unknown model config keys: {sorted(unknown)}")
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """(data, fsdp, tensor) mesh shape; -1 = all remaining devices."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def optim_config(learning_rate: float = 1e-3, warmup_steps: int = 100,
                 **overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "name": "adamw",  # or "muon" (block matrices; see gpt_jax/train/optim.py)
        "learning_rate": learning_rate, "warmup_steps": warmup_steps, "min_lr_ratio": 0.1,
        "b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0,
        "muon_beta": 0.95,  # Muon's momentum (name="muon")
    })
    cfg.update(overrides)
    return cfg


def train_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "batch_size": 16,            # global batch (sequences per optimizer step)
        "seq_len": 256,              # tokens per sequence (windows are seq_len + 1)
        "grad_accum_steps": 1,       # microbatches per step
        "total_steps": 1000,
        "log_every": 10,
        "eval_every": 200,
        "eval_batches": 8,
        "checkpoint_every": 200,
        "max_to_keep": 2,
        "z_loss": 0.0,
        "data_source": "pipeline",   # "pipeline" (token shards) | "synthetic" (random tokens)
        "progress_bar": True,
        "tensorboard": True,
        "peak_flops": 0.0,           # 0 = measure a float32 2048^3 matmul at start
        "max_nonfinite_steps": 3,    # stop after this many consecutive skipped (non-finite) steps
    })
    cfg.update(overrides)
    return cfg


def distributed_config() -> ml_collections.ConfigDict:
    """Multi-host: set initialize=True on every host (TPU pods/SLURM auto-detect the rest)."""
    return ml_collections.ConfigDict({
        "initialize": False, "coordinator_address": "", "num_processes": 0, "process_id": -1,
    })


def attach_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the `data` and `tokenizer` sections (owned by gpt_jax.data.config)."""
    from gpt_jax.data.config import data_config, tokenizer_config

    config.data = data_config()
    config.tokenizer = tokenizer_config()
    return config
