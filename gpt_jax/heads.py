"""Scalar heads on the GPT trunk: the reward model and PPO's value model.

`RewardModel(config)` = the GPT trunk (params under "trunk", the same tree as a GPT's, so an SFT
checkpoint drops in) + a Dense(1) head (params under "head") reading the final hidden state at the
LAST REAL token of each row: for prompt + response + <|assistant_end|> that is the end token.

Padding is described by `valid` [N, T] (True on real tokens), so rows may be right-padded,
left-padded or both: positions count real tokens only (cumsum(valid) - 1) and attention never
reaches a padded slot (valid is passed as the segment id, 0 = padding), so a row scores the same
whatever padding surrounds it. The GPT also computes logits we never use; under jit XLA removes that
dead matmul, so the reward model costs the trunk only.

`ranking_loss` is InstructGPT's: for each prompt with K ranked responses, the mean over its C(K,2)
pairs of -log sigmoid(r_better - r_worse), then the mean over prompts (one prompt = one batch
element, all K responses in one forward pass).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from gpt_jax.model import GPT, GPTConfig
from gpt_jax.seq_utils import last_valid_index, positions_from_valid


def valid_from_lengths(lengths, t: int):
    """Right padding: [N] lengths -> [N, T] bool."""
    return jnp.arange(t)[None, :] < jnp.asarray(lengths)[:, None]


class RewardModel(nn.Module):
    """tokens [N, T] (+ valid [N, T]) -> scalar reward [N] (float32); with per_token=True the
    head reads every position instead -> [N, T] (PPO's value model, same params tree)."""

    config: GPTConfig
    mesh: Mesh | None = None
    per_token: bool = False

    @nn.compact
    def __call__(self, tokens, valid=None, deterministic: bool = True):
        cfg = self.config
        if valid is None:
            valid = jnp.ones(tokens.shape, bool)
        valid = valid.astype(bool)
        positions = positions_from_valid(valid)
        _, hidden = GPT(cfg, self.mesh, name="trunk")(
            tokens, positions=positions, segment_ids=valid.astype(jnp.int32),
            deterministic=deterministic, return_hidden=True)
        if self.per_token:
            h = hidden.astype(jnp.float32)
        else:
            eos = last_valid_index(valid)
            h = jnp.take_along_axis(hidden, eos[:, None, None], axis=1)[:, 0].astype(jnp.float32)
        head = nn.Dense(
            1, name="head", dtype=jnp.float32, param_dtype=cfg.weight_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0 / (cfg.d_model + 1) ** 0.5), ("embed", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))
        return head(h)[..., 0]


def score(params, model_config: GPTConfig, tokens, lengths=None, valid=None):
    """Rewards [N] of rows tokens [N, T]; pure and jit-able (model_config static).

    Give `lengths` [N] for right-padded rows (the end token at lengths - 1), or `valid` [N, T] for
    any padding (e.g. a left-padded prompt followed by a right-padded response, as PPO has).
    """
    if valid is None:
        valid = (jnp.ones(tokens.shape, bool) if lengths is None
                 else valid_from_lengths(lengths, tokens.shape[-1]))
    return RewardModel(model_config).apply({"params": params}, tokens, valid)


def pair_mask(groups):
    """[P, K] tie groups (-1 = no response) -> [P, K, K] bool: pair (i, j), i ranked above j, is
    a training pair (both present, not tied). Responses are stored best first."""
    k = groups.shape[-1]
    upper = jnp.triu(jnp.ones((k, k), bool), 1)
    present = groups >= 0
    return (upper[None] & present[:, :, None] & present[:, None, :]
            & (groups[:, :, None] != groups[:, None, :]))


def ranking_loss(rewards, groups):
    """InstructGPT's K-wise loss. rewards [P, K] (best first), groups [P, K].

    Returns (loss, aux): loss = mean over prompts having >= 1 pair of the mean over that prompt's
    pairs of -log sigmoid(r_i - r_j); aux = {"accuracy" (pairs with r_i > r_j), "num_pairs",
    "num_tokens" (= prompts counted; the weight for gradient accumulation)}.
    """
    rewards = rewards.astype(jnp.float32)
    mask = pair_mask(groups).astype(jnp.float32)
    diff = rewards[:, :, None] - rewards[:, None, :]
    per_pair = -jax.nn.log_sigmoid(diff)
    pairs = mask.sum((1, 2))
    has = (pairs > 0).astype(jnp.float32)
    per_prompt = (per_pair * mask).sum((1, 2)) / jnp.maximum(pairs, 1.0)
    n_prompts = has.sum()
    loss = (per_prompt * has).sum() / jnp.maximum(n_prompts, 1.0)
    total_pairs = mask.sum()
    accuracy = ((diff > 0) * mask).sum() / jnp.maximum(total_pairs, 1.0)
    return loss, {"accuracy": accuracy, "num_pairs": total_pairs, "num_tokens": n_prompts}
