"""The math of GRPO (Group Relative Policy Optimization, DeepSeekMath, Shao et al. 2024), as pure
jit-able functions.

GRPO drops PPO's value model: it samples G responses per prompt and uses each response's reward
relative to its group as the advantage of every one of its tokens.

- `group_advantages`: A_i = r_i - mean(r_group), optionally / (std(r_group) + eps) (the paper's
  form; Dr. GRPO argues for leaving the std out, so it is an option). A group whose rewards are all
  equal carries no signal (every advantage is 0): it is marked dropped and counted.
- `k3_kl`: the per-token KL(pi || pi_ref) estimator of the paper (Schulman's k3):
  exp(ref - logp) - (ref - logp) - 1, unbiased and >= 0.
- `grpo_loss`: PPO's clipped ratio objective with the group advantage, plus kl_coef * k3, averaged
  over each response's tokens and then over responses ("seq_mean", the paper) or over all tokens
  of the batch ("token_mean", DAPO). Tool-written tokens are not the policy's: `mask` is 0 there
  (and on padding), so they take no part in the ratio, the KL or the averages.

Shapes: B = P * G responses (prompt-major: a prompt's G samples are adjacent) of N tokens.
"""
from __future__ import annotations

import jax.numpy as jnp

from gpt_jax.train.ppo_core import masked_mean


def group_advantages(rewards, group_size: int, scale_by_std: bool = False, eps: float = 1e-6):
    """rewards [B] (B = P * group_size, prompt-major) -> (advantages [B], kept [B] bool).

    kept is False for every response of a group whose rewards are all equal."""
    r = rewards.reshape(-1, group_size).astype(jnp.float32)
    centred = r - r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, keepdims=True)  # population std over the group
    adv = centred / (std + eps) if scale_by_std else centred
    kept = jnp.broadcast_to((r.max(axis=1) > r.min(axis=1))[:, None], r.shape)
    return jnp.where(kept, adv, 0.0).reshape(-1), kept.reshape(-1)


def k3_kl(logprobs, ref_logprobs):
    """Per-token k3 estimate of KL(pi || pi_ref) at tokens sampled from pi: e^d - d - 1, d = ref - logp."""
    d = ref_logprobs - logprobs
    return jnp.exp(d) - d - 1.0


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip: float = 0.2,
              kl_coef: float = 0.0, aggregate: str = "seq_mean"):
    """-> (loss, stats). logprobs / old_logprobs / ref_logprobs / mask [B, N]; advantages [B].

    Per token: max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)) + kl_coef * k3, then the
    `aggregate` mean over tokens where mask is 1."""
    mask = mask.astype(jnp.float32)
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = jnp.exp(log_ratio)
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    kl = k3_kl(logprobs, ref_logprobs) * mask
    per_token = jnp.maximum(unclipped, clipped) + kl_coef * kl
    if aggregate == "seq_mean":
        per_seq = masked_mean(per_token, mask, axis=1)
        has_tokens = (mask.sum(axis=1) > 0).astype(jnp.float32)
        loss = (per_seq * has_tokens).sum() / jnp.maximum(has_tokens.sum(), 1.0)
    elif aggregate == "token_mean":
        loss = masked_mean(per_token, mask)
    else:
        raise ValueError(f"grpo aggregate={aggregate!r}; expected 'seq_mean' or 'token_mean'")
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "ratio_mean": masked_mean(ratio, mask),
        "kl": masked_mean(kl, mask),
        "approx_kl_old": masked_mean((ratio - 1.0) - log_ratio, mask),
    }
    return loss, stats
