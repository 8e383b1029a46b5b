"""DPO (Direct Preference Optimization, Rafailov et al. 2023) and IPO (Azar et al. 2023): the loss
and a pure jit-able step.

DPO trains the policy on preference pairs directly, with no reward model and no sampling: with
h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)] (sequence log-probs of the
chosen y_w and the rejected y_l, summed over the response tokens),
- `sigmoid` (DPO): -log sigmoid(beta h), with optional label smoothing eps (conservative DPO:
  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h));
- `ipo`: (h - 1 / (2 beta))^2.
The implicit rewards beta (log pi - log pi_ref) of the chosen and rejected responses give the
metrics DPO is watched by: their accuracy (chosen > rejected), margin and means.

The reference log-probs are computed once per pair before training (`sequence_logprobs` under the
frozen SFT params), so a step only runs the policy: chosen and rejected rows go through the model
as one batch of 2B. Layout per side (PPO's rollout layout, `ppo_step`): `tokens` [B, P + N], the
prompt left-padded to P then the response right-padded; `valid` [B, P + N]; `response_mask`
[B, N] (1 on the response tokens the loss counts: tool-written tokens and padding are 0).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gpt_jax.model import GPT, GPTConfig
from gpt_jax.train.ppo_step import PPOHyper, response_logprobs
from gpt_jax.train.state import TrainState
from gpt_jax.train.step import all_finite, keep_if_finite


def dpo_loss(pol_chosen, pol_rejected, ref_chosen, ref_rejected, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """Sequence log-probs [B] -> (mean loss, stats)."""
    h = (pol_chosen - ref_chosen) - (pol_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
                  - label_smoothing * jax.nn.log_sigmoid(-beta * h))
    elif loss_type == "ipo":
        losses = jnp.square(h - 1.0 / (2.0 * beta))
    else:
        raise ValueError(f"dpo loss_type={loss_type!r}; expected 'sigmoid' or 'ipo'")
    chosen, rejected = beta * (pol_chosen - ref_chosen), beta * (pol_rejected - ref_rejected)
    stats = {"reward_accuracy": (chosen > rejected).astype(jnp.float32).mean(),
             "reward_margin": (chosen - rejected).mean(), "reward_chosen": chosen.mean(),
             "reward_rejected": rejected.mean()}
    return losses.mean(), stats


@dataclasses.dataclass(frozen=True)
class DPOHyper:
    prompt_len: int
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    vocab_limit: int = 0


def sequence_logprobs(policy: GPT, params, side: dict, hp: DPOHyper):
    """Summed log-probs of each row's response tokens (response_mask): [B]."""
    lh = PPOHyper(prompt_len=hp.prompt_len, vocab_limit=hp.vocab_limit)
    lp = response_logprobs(policy, params, side["tokens"], side["valid"], lh)
    return (lp * side["response_mask"].astype(jnp.float32)).sum(1)


def _both(batch):
    """chosen rows then rejected rows, as one side of 2B rows."""
    return {k: jnp.concatenate([batch["chosen"][k], batch["rejected"][k]])
            for k in ("tokens", "valid", "response_mask")}


def make_dpo_step(model_config: GPTConfig, tx: optax.GradientTransformation, hp: DPOHyper,
                  mesh=None) -> Callable:
    """The pure dpo_step(state, batch, rng) -> (state, metrics). batch: {"chosen": side,
    "rejected": side, "ref_chosen": [B], "ref_rejected": [B]} (the reference's sequence log-probs);
    state.params are the policy's GPT params. A non-finite loss, gradient or update leaves the
    state as it was (`nonfinite` = 1), as in train/step.py."""
    policy = GPT(model_config, mesh=mesh)

    def loss_fn(params, batch):
        lp = sequence_logprobs(policy, params, _both(batch), hp)
        b = lp.shape[0] // 2
        loss, stats = dpo_loss(lp[:b], lp[b:], batch["ref_chosen"], batch["ref_rejected"],
                               hp.beta, hp.loss_type, hp.label_smoothing)
        return loss, {"loss": loss, **stats}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def dpo_step(state: TrainState, batch, rng):
        del rng  # deterministic: no dropout, no sampling
        (_, stats), grads = grad_fn(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        stats["grad_norm"] = optax.global_norm(grads)
        finite = jnp.isfinite(stats["loss"]) & jnp.isfinite(stats["grad_norm"]) & all_finite(params)
        params = keep_if_finite(finite, params, state.params)
        opt_state = keep_if_finite(finite, opt_state, state.opt_state)
        stats["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), stats

    return dpo_step
