"""Optimizer details: weight-decay mask, warmup + cosine schedule."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model import GPT, GPTConfig
from gpt_jax.train.optim import decay_mask, learning_rate_schedule
from helpers import tiny_config


def test_decay_mask_excludes_norms_biases_embeddings():
    cfg = GPTConfig(family="gpt2", vocab_size=64, max_seq_len=8, n_layers=1, d_model=16, n_heads=2)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(decay_mask(params))}
    decayed = sorted(k for k, v in flat.items() if v)
    assert decayed == ["blocks/attn/k", "blocks/attn/o", "blocks/attn/q", "blocks/attn/v",
                       "blocks/mlp/fc", "blocks/mlp/proj"]


def test_schedule_warmup_then_cosine_to_min():
    cfg = tiny_config().optim
    cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio = 1.0, 10, 0.1
    s = learning_rate_schedule(cfg, 110)
    np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)],
                               [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)

