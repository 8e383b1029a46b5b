"""PPO's compiled step: score a rollout batch, then epochs x minibatches of clipped updates.

`make_ppo_step(...)` returns the pure `ppo_step(state, ref_params, rollout, scores, beta, rng)
-> (state, metrics)`, jit-compiled over the mesh. Inside one call:

1. experience (no gradients): log-probs of the sampled response tokens under the policy and the
   frozen reference (both at the sampling temperature), the value model's values, per-token
   rewards -beta * KL + score at the end token (ppo_core.per_token_rewards), GAE, whitened
   advantages;
2. `epochs` passes over the batch, each in `minibatches` shuffled minibatches, of the clipped
   policy loss + vf_coef * clipped value loss (+ ptx_coef * the pretraining loss on a batch of
   pretraining text, PPO-ptx), one optimizer update per minibatch, under `lax.scan`.

Layout of a rollout (all [B, ...] arrays, batch-sharded): `tokens` [B, P + N] is the prompt
left-padded to P followed by the response right-padded to N; `valid` [B, P + N] marks real tokens;
`response_mask` [B, N] the response tokens (end token included); `finished` [B] whether the
response ended with an end token. Positions count real tokens only and padding is a segment of
its own, so a row scores the same whatever padding surrounds it.

The train state is a `TrainState` whose params are {"policy": GPT params, "value": RewardModel
(per_token) params}: two separate trunks (InstructGPT), one optimizer over both. The step counter
counts optimizer updates (epochs * minibatches per call).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gpt_jax.heads import RewardModel
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.scoring import token_logprobs
from gpt_jax.seq_utils import positions_from_valid
from gpt_jax.train import ppo_core as C
from gpt_jax.train.losses import cross_entropy
from gpt_jax.train.minibatch import minibatch_updates
from gpt_jax.train.state import TrainState

ROLLOUT_KEYS = ("tokens", "valid", "response_mask", "finished")


@dataclasses.dataclass(frozen=True)
class PPOHyper:
    """The static knobs of one PPO step (hashable; see ppo.ppo_config for their meaning)."""

    prompt_len: int
    temperature: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    epochs: int = 4
    minibatches: int = 4
    whiten_rewards: bool = False
    no_eos_penalty: float = 0.0
    ptx_coef: float = 0.0
    vocab_limit: int = 0  # > 0: ids >= vocab_limit are impossible (the sampler forbids them)


def response_logits(policy: GPT, params, tokens, valid, hp: PPOHyper):
    """[B, N, V] float32 logits predicting the N response tokens (divided by the temperature)."""
    logits = policy.apply({"params": params}, tokens[:, :-1],
                          positions=positions_from_valid(valid)[:, :-1],
                          segment_ids=valid[:, :-1].astype(jnp.int32),
                          logits_from=hp.prompt_len - 1)
    logits = logits.astype(jnp.float32) / hp.temperature
    if hp.vocab_limit:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < hp.vocab_limit, logits, -1e9)
    return logits


def response_logprobs(policy: GPT, params, tokens, valid, hp: PPOHyper):
    """log pi(y_t | prompt, y_<t) at the sampling temperature: [B, N]."""
    logits = response_logits(policy, params, tokens, valid, hp)
    return token_logprobs(logits, tokens[:, hp.prompt_len:])


def response_values(value_model: RewardModel, params, tokens, valid, hp: PPOHyper):
    """V(state before response token t): [B, N]."""
    values = value_model.apply({"params": params}, tokens[:, :-1], valid[:, :-1])
    return values[:, hp.prompt_len - 1:]


def experience(policy, value_model, params, ref_params, rollout, scores, beta, hp: PPOHyper):
    """Everything the updates need, from the policy before the update (no gradients)."""
    tokens, valid = rollout["tokens"], rollout["valid"]
    mask = rollout["response_mask"].astype(jnp.float32)
    logprobs = response_logprobs(policy, params["policy"], tokens, valid, hp)
    ref_logprobs = response_logprobs(policy, ref_params, tokens, valid, hp)
    values = response_values(value_model, params["value"], tokens, valid, hp) * mask
    rewards, kl = C.per_token_rewards(scores, logprobs, ref_logprobs, mask, beta,
                                      rollout["finished"], hp.no_eos_penalty)
    if hp.whiten_rewards:
        rewards = C.whiten(rewards, mask, shift_mean=False)
    advantages, returns = C.gae(rewards, values, mask, hp.gamma, hp.lam)
    advantages = C.whiten(advantages, mask)
    exp = {"old_logprobs": logprobs, "old_values": values, "advantages": advantages,
           "returns": returns}
    stats = {
        "kl": kl.sum(1).mean(),  # per sequence: sum_t log pi / pi_ref, the "KL" PPO reports
        "score": scores.mean(),
        "non_score_reward": (-beta * kl).sum(1).mean(),
        "explained_variance": C.explained_variance(values, returns, mask),
        "value_mean": C.masked_mean(values, mask),
        "return_mean": C.masked_mean(returns, mask),
        "response_length": mask.sum(1).mean(),
        "finished_frac": rollout["finished"].astype(jnp.float32).mean(),
    }
    return exp, stats


def make_ppo_loss(policy: GPT, value_model: RewardModel, hp: PPOHyper, ptx_loss=None):
    """loss(params, minibatch) -> (loss, stats); minibatch = rollout + experience (+ "ptx")."""

    def loss_fn(params, mb):
        tokens, valid = mb["tokens"], mb["valid"]
        mask = mb["response_mask"].astype(jnp.float32)
        logits = response_logits(policy, params["policy"], tokens, valid, hp)
        logprobs = token_logprobs(logits, tokens[:, hp.prompt_len:])
        values = response_values(value_model, params["value"], tokens, valid, hp)
        pg, pg_stats = C.policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mask,
                                     hp.clip)
        vf, vf_stats = C.value_loss(values, mb["old_values"], mb["returns"], mask, hp.value_clip)
        loss = pg + hp.vf_coef * vf
        stats = {"policy_loss": pg, "value_loss": vf, "entropy": C.entropy(logits, mask),
                 **pg_stats, **vf_stats}
        if ptx_loss is not None:
            ptx = ptx_loss(params["policy"], mb["ptx"])
            loss = loss + hp.ptx_coef * ptx
            stats["ptx_loss"] = ptx
        return loss, {"loss": loss, **stats}

    return loss_fn


def lm_ptx_loss(policy: GPT):
    """Next-token loss on a [b, S + 1] batch of pretraining tokens (PPO-ptx)."""

    def loss(params, tokens):
        logits = policy.apply({"params": params}, tokens[:, :-1])
        return cross_entropy(logits, tokens[:, 1:], None)[0]

    return loss


def make_ppo_step(model_config: GPTConfig, tx: optax.GradientTransformation, hp: PPOHyper,
                  mesh=None) -> Callable:
    """The pure ppo_step(state, ref_params, rollout, scores, beta, rng) -> (state, metrics).

    rollout may carry "ptx" [minibatches * b, S + 1] pretraining tokens when hp.ptx_coef > 0.
    metrics: means over all minibatch updates of the losses and PPO diagnostics, the experience
    stats, and the FIRST minibatch's ratio_mean / approx_kl / clip_frac ("first_*": 1, 0, 0 up
    to rounding, since the first update starts from the policy that produced old_logprobs).
    """
    policy = GPT(model_config, mesh=mesh)
    value_model = RewardModel(model_config, mesh=mesh, per_token=True)
    use_ptx = hp.ptx_coef > 0
    loss_fn = make_ppo_loss(policy, value_model, hp, lm_ptx_loss(policy) if use_ptx else None)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def ppo_step(state: TrainState, ref_params, rollout, scores, beta, rng):
        rollout = dict(rollout)
        ptx = rollout.pop("ptx", None)
        exp, exp_stats = experience(policy, value_model, state.params, ref_params, rollout,
                                    scores, beta, hp)
        data = {**{k: rollout[k] for k in ROLLOUT_KEYS}, **exp}
        extra = None
        if use_ptx:
            if ptx is None:
                raise ValueError("ptx_coef > 0 needs rollout['ptx'] (pretraining tokens)")
            ptx_mbs = ptx.reshape(hp.minibatches, -1, ptx.shape[-1])
            extra = lambda i: {"ptx": ptx_mbs[i % hp.minibatches]}  # noqa: E731
        params, opt_state, stats, nonfinite = minibatch_updates(
            grad_fn, tx, state, data, hp.epochs, hp.minibatches, rng, extra)
        metrics = {k: v.mean() for k, v in stats.items()}
        for k in ("ratio_mean", "approx_kl", "clip_frac"):
            metrics[f"first_{k}"] = stats[k][0]
        metrics["nonfinite"] = nonfinite  # the whole step was skipped (train/minibatch.py)
        metrics.update(exp_stats)
        metrics["beta"] = beta
        n_updates = hp.epochs * hp.minibatches
        new_state = TrainState(step=state.step + n_updates, params=params, opt_state=opt_state)
        return new_state, metrics

    return ppo_step
