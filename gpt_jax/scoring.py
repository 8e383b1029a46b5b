"""Log-prob scoring: log p(completion | prompt) per token, batched and masked.

Used by evals (multiple choice = compare summed log-probs), the reward model / PPO (old and new
policy log-probs of sampled completions) and tests of the sampler. Rows are prompt + completion,
right-padded (causal attention never looks right, so padding changes nothing), run through a plain
`GPT.apply`; the logits at position t score the token at t + 1. `temperature` divides the logits
first, matching what `sampling.generate` reports for sampled tokens.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model import GPT, GPTConfig
from gpt_jax.seq_utils import bucket


def token_logprobs(logits, targets, temperature=1.0):
    """log softmax(logits / temperature)[targets]: logits [..., V] float, targets [...] int."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnums=1)
def _score(params, config: GPTConfig, tokens, where, targets, temperature):
    logits = GPT(config).apply({"params": params}, tokens)  # [B, T, V]
    picked = jnp.take_along_axis(logits, where[..., None], axis=1)  # [B, N, V]
    return token_logprobs(picked, targets, temperature)


def logprobs(params, config: GPTConfig, prompt_ids: Sequence[Sequence[int]],
             completion_ids: Sequence[Sequence[int]], temperature: float = 1.0,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(log-probs [B, N] float32, mask [B, N] bool) of each completion token given its prompt.

    N is the longest completion; entries past a row's completion are 0 with mask False.
    Shapes are bucketed to powers of two (batch, length) so repeated calls rarely recompile.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError("prompt_ids and completion_ids differ in length")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    total = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    if total > config.max_seq_len:
        raise ValueError(f"prompt + completion of {total} tokens exceeds the model context "
                         f"of {config.max_seq_len}")
    k = len(prompt_ids)
    b = bucket(k, 1)
    t = min(bucket(total, 8), config.max_seq_len)
    n = bucket(max(1, max(len(c) for c in completion_ids)), 1)
    tokens = np.full((b, t), pad_id, np.int32)
    where = np.zeros((b, n), np.int32)
    targets = np.zeros((b, n), np.int32)
    mask = np.zeros((b, n), bool)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        tokens[i, : len(p) + len(c)] = list(p) + list(c)
        where[i, : len(c)] = len(p) - 1 + np.arange(len(c))
        targets[i, : len(c)] = c
        mask[i, : len(c)] = True
    lp = np.asarray(_score(params, config, tokens, where, targets, jnp.float32(temperature)))
    width = max(len(c) for c in completion_ids)
    return np.where(mask, lp, 0.0)[:k, :width].astype(np.float32), mask[:k, :width]
