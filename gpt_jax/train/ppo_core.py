"""The PPO math of RLHF (InstructGPT / Ziegler et al. 2019), as pure jit-able functions.

Shapes: B rollouts of N response tokens; `mask` [B, N] is 1 on real response tokens (up to and
including the end token), 0 on padding after it. All reductions are masked means.

- Reward per token: -beta * (log pi(y_t) - log pi_ref(y_t)), the per-token KL estimate, with the
  reward model's score added on the last real token (minus a penalty when no end token was
  produced). Summed over a response this is RM score - beta * KL(pi || pi_ref).
- GAE (gamma, lambda) over the masked tokens, positions past the end treated as terminal.
- The clipped policy objective and the clipped value loss of PPO, with the diagnostics PPO is
  watched by (clip fraction, approximate KL, entropy, explained variance).
- The adaptive KL controller: beta moves towards a target KL with a proportional, clipped error.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt_jax.seq_utils import last_valid_index


def masked_mean(x, mask, axis=None):
    mask = mask.astype(x.dtype)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def masked_var(x, mask):
    mean = masked_mean(x, mask)
    return masked_mean(jnp.square(x - mean), mask)


def whiten(x, mask, shift_mean: bool = True):
    """(x - mean) / std over the masked entries (mean kept when shift_mean=False); 0 elsewhere."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def per_token_rewards(score, logprobs, ref_logprobs, mask, beta, finished=None,
                      no_eos_penalty: float = 0.0):
    """(rewards [B, N], kl [B, N]): -beta * kl on every token, + score on the last real token.

    score [B] is the reward model's score of each full response; rows that did not finish (no end
    token) get `score - no_eos_penalty` instead.
    """
    kl = (logprobs - ref_logprobs) * mask
    if finished is not None:
        score = jnp.where(finished, score, score - no_eos_penalty)
    last = jax.nn.one_hot(last_valid_index(mask), mask.shape[1], dtype=kl.dtype) * mask
    return -beta * kl + score[:, None] * last, kl


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation -> (advantages [B, N], returns [B, N]).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A
    beyond the last real token taken as 0 (the episode ends at the end token).
    """
    values = values * mask
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = (rewards + gamma * next_values - values) * mask

    def back(carry, xs):
        delta, m = xs
        adv = (delta + gamma * lam * carry) * m
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros(rewards.shape[0], rewards.dtype),
                          (deltas.T[::-1], mask.T[::-1].astype(rewards.dtype)))
    advantages = adv[::-1].T
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip: float = 0.2):
    """PPO's clipped surrogate -> (loss, {"clip_frac", "approx_kl", "ratio_mean"})."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).astype(ratio.dtype), mask),
        # the low-variance estimator of KL(old || new): E[(r - 1) - log r]
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
    }
    return loss, stats


def value_loss(values, old_values, returns, mask, clip: float = 0.2):
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within old_values +- clip."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    loss = 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns))
    frac = masked_mean((jnp.abs(values - old_values) > clip).astype(values.dtype), mask)
    return masked_mean(loss, mask), {"value_clip_frac": frac}


def entropy(logits, mask):
    """Mean per-token entropy of the policy's distribution (logits [B, N, V])."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return masked_mean(-(jnp.exp(logp) * logp).sum(-1), mask)


def explained_variance(values, returns, mask):
    """1 - Var[R - V] / Var[R] over the masked tokens (1 = perfect value predictions)."""
    return 1.0 - masked_var(returns - values, mask) / jnp.maximum(masked_var(returns, mask), 1e-8)


def update_kl_coef(beta, kl, n_steps, target: float, horizon: float):
    """Adaptive KL controller (Ziegler et al.): beta *= 1 + clip(kl / target - 1, +-0.2) * n / H."""
    error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
    return beta * (1.0 + error * n_steps / horizon)
