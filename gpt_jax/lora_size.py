"""How large a LoRA adapter is against its model, as the model widens, without building either.

A rank-r pair on a d x d weight holds 2rd params against its d^2: the adapter's share of the
model falls as 1/d. At the tiny recipe's d_model = 128 a rank-8 adapter on every attention and
MLP projection is ~6% of the model, whatever the implementation; `fraction_by_width` measures the
same adapter (same rank, targets and trained token rows) on the same model family at wider
d_model (heads widened to keep the head size; layers, vocabulary and FFN rule kept), so the
`lora_sft` summary says at which width the usual "< 1% of the params at rank 8" holds. Shapes
only (`jax.eval_shape`): no memory is allocated, so a 4,096-wide model costs nothing to count.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import lora
from gpt_jax.model import GPT, GPTConfig

WIDTHS = (128, 256, 512, 1024, 2048, 4096)


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_counts(model_config: GPTConfig, cfg: lora.LoRAConfig) -> tuple[int, int]:
    """(adapter params, model params) for `cfg` on a model of `model_config`'s shape."""
    tokens = jnp.zeros((1, min(8, model_config.max_seq_len)), jnp.int32)
    base = nn.unbox(jax.eval_shape(
        lambda: GPT(model_config).init(jax.random.PRNGKey(0), tokens)["params"]))
    adapter = jax.eval_shape(lambda: lora.init_adapter(base, cfg, jax.random.PRNGKey(0)))
    return _count(adapter), _count(base)


def widened(model_config: GPTConfig, d_model: int) -> GPTConfig:
    """`model_config` at width `d_model`, with the same head size (so more heads), the same
    number of layers, vocabulary and FFN rule (d_ff 0 scales with the width; a fixed d_ff scales
    by the same factor)."""
    head = model_config.d_model // model_config.n_heads
    if d_model % head:
        raise ValueError(f"d_model={d_model} is not a multiple of the head size {head}")
    factor = d_model / model_config.d_model
    kv = model_config.n_kv_heads and max(1, round(model_config.n_kv_heads * factor))
    return dataclasses.replace(model_config, d_model=d_model, n_heads=d_model // head,
                               n_kv_heads=kv,
                               d_ff=model_config.d_ff and int(round(model_config.d_ff * factor)))


def fraction_by_width(model_config: GPTConfig, cfg: lora.LoRAConfig,
                      widths=WIDTHS) -> dict[str, float]:
    """{str(d_model): adapter params / model params} for `cfg` on `model_config` widened."""
    out = {}
    for width in widths:
        n_adapter, n_base = param_counts(widened(model_config, width), cfg)
        out[str(width)] = n_adapter / n_base
    return out
