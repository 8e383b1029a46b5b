"""GRPO's compiled step: group advantages from the rewards, then epochs x minibatches of clipped
updates of the policy alone (no value model).

`make_grpo_step(model_config, tx, hp)` returns the pure
`grpo_step(state, ref_params, rollout, rewards, rng) -> (state, metrics)`. The rollout has PPO's
layout (`ppo_step`: `tokens` [B, P + N], `valid`, `response_mask` [B, N], `finished`), B = P x G
responses with each prompt's G samples adjacent, plus an optional `tool_mask` [B, N] (True on
tool-written tokens: they are not the policy's, so they leave the ratio, the KL and the means).
`state.params` is the policy's GPT params; `ref_params` the frozen reference (KL only).

Inside one call (grpo_core has the math):
1. advantages: reward - group mean (/ group std with `scale_by_std`); groups whose rewards are all
   equal give every token advantage 0 and are counted (`dropped_groups`);
2. old and reference log-probs of the sampled tokens, at the sampling temperature (no gradients);
3. `epochs` x `minibatches` updates of the clipped objective + kl_coef * k3 (train/minibatch.py,
   with its non-finite rule). The first update starts from the sampling policy, so its ratio is 1
   (`first_ratio_mean`, `first_clip_frac` 0).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gpt_jax.model import GPT, GPTConfig
from gpt_jax.scoring import token_logprobs
from gpt_jax.train import grpo_core as G
from gpt_jax.train.minibatch import minibatch_updates
from gpt_jax.train.ppo_step import PPOHyper, response_logits, response_logprobs
from gpt_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class GRPOHyper:
    """The static knobs of one GRPO step (hashable)."""

    prompt_len: int
    group_size: int = 8
    temperature: float = 1.0
    clip: float = 0.2
    kl_coef: float = 0.0
    scale_by_std: bool = False
    aggregate: str = "seq_mean"  # or "token_mean"
    epochs: int = 1
    minibatches: int = 1
    vocab_limit: int = 0

    def logits_hyper(self) -> PPOHyper:
        """The knobs `ppo_step.response_logits` reads (prompt length, temperature, vocab)."""
        return PPOHyper(prompt_len=self.prompt_len, temperature=self.temperature,
                        vocab_limit=self.vocab_limit)


def policy_mask(rollout) -> jax.Array:
    """1.0 on the response tokens the policy wrote: response_mask without tool-written tokens."""
    mask = rollout["response_mask"].astype(jnp.float32)
    if "tool_mask" in rollout:
        mask = mask * (1.0 - rollout["tool_mask"].astype(jnp.float32))
    return mask


def make_grpo_step(model_config: GPTConfig, tx: optax.GradientTransformation, hp: GRPOHyper,
                   mesh=None) -> Callable:
    policy = GPT(model_config, mesh=mesh)
    lh = hp.logits_hyper()

    def loss_fn(params, mb):
        logits = response_logits(policy, params, mb["tokens"], mb["valid"], lh)
        logprobs = token_logprobs(logits, mb["tokens"][:, hp.prompt_len:])
        loss, stats = G.grpo_loss(logprobs, mb["old_logprobs"], mb["ref_logprobs"],
                                  mb["advantages"], mb["mask"], hp.clip, hp.kl_coef, hp.aggregate)
        return loss, {"loss": loss, **stats}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def grpo_step(state: TrainState, ref_params, rollout, rewards, rng):
        if rollout["tokens"].shape[0] % hp.group_size:
            raise ValueError(f"rollout batch {rollout['tokens'].shape[0]} is not a multiple of "
                             f"group_size={hp.group_size}")
        tokens, valid = rollout["tokens"], rollout["valid"]
        mask = policy_mask(rollout)
        advantages, kept = G.group_advantages(rewards, hp.group_size, hp.scale_by_std)
        data = {"tokens": tokens, "valid": valid, "mask": mask, "advantages": advantages,
                "old_logprobs": response_logprobs(policy, state.params, tokens, valid, lh),
                "ref_logprobs": response_logprobs(policy, ref_params, tokens, valid, lh)}
        params, opt_state, stats, nonfinite = minibatch_updates(
            grad_fn, tx, state, data, hp.epochs, hp.minibatches, rng)
        metrics = {k: v.mean() for k, v in stats.items()}
        for k in ("ratio_mean", "clip_frac"):
            metrics[f"first_{k}"] = stats[k][0]
        groups = rewards.shape[0] // hp.group_size
        metrics.update({
            "nonfinite": nonfinite,
            "reward": rewards.astype(jnp.float32).mean(),
            "dropped_groups": groups - kept.reshape(groups, -1)[:, 0].sum(),
            "response_length": mask.sum(1).mean(),
        })
        n_updates = hp.epochs * hp.minibatches
        return TrainState(step=state.step + n_updates, params=params, opt_state=opt_state), metrics

    return grpo_step
