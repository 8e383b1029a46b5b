"""Epochs x shuffled minibatches of optimizer updates over one batch of experience, under one
`lax.scan`, with the non-finite rule of `train/step.py`: what the RL steps (PPO, GRPO) share.

`minibatch_updates(grad_fn, tx, state, data, epochs, minibatches, rng, extra=None)` runs
`epochs * minibatches` updates; each epoch visits the batch in a fresh permutation (keys from
`rng` folded with `state.step`). `extra(i)` may add per-update inputs to a minibatch (PPO-ptx's
pretraining tokens). Returns (params, opt_state, stats stacked per update [U, ...], nonfinite):
when any update's loss, gradient norm or the final params are not finite, params and optimizer
state come back as they were (the whole call is skipped) and `nonfinite` is 1.0.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gpt_jax.train.state import TrainState
from gpt_jax.train.step import all_finite, keep_if_finite


def minibatch_updates(grad_fn: Callable, tx: optax.GradientTransformation, state: TrainState,
                      data: dict, epochs: int, minibatches: int, rng,
                      extra: Callable[[jax.Array], dict] | None = None):
    b = jax.tree.leaves(data)[0].shape[0]
    if b % minibatches:
        raise ValueError(f"rollout batch {b} not divisible by minibatches={minibatches}")
    keys = jax.random.split(jax.random.fold_in(rng, state.step), epochs)
    order = jnp.concatenate([jax.random.permutation(k, b) for k in keys])
    order = order.reshape(epochs * minibatches, b // minibatches)

    def update(carry, xs):
        params, opt_state = carry
        idx, i = xs
        mb = jax.tree.map(lambda x: x[idx], data)
        if extra is not None:
            mb.update(extra(i))
        (_, stats), grads = grad_fn(params, mb)
        updates, opt_state = tx.update(grads, opt_state, params)
        stats["grad_norm"] = optax.global_norm(grads)
        return (optax.apply_updates(params, updates), opt_state), stats

    (params, opt_state), stats = jax.lax.scan(
        update, (state.params, state.opt_state), (order, jnp.arange(epochs * minibatches)))
    finite = (jnp.all(jnp.isfinite(stats["loss"])) & jnp.all(jnp.isfinite(stats["grad_norm"]))
              & all_finite(params))
    params = keep_if_finite(finite, params, state.params)
    opt_state = keep_if_finite(finite, opt_state, state.opt_state)
    return params, opt_state, stats, 1.0 - finite.astype(jnp.float32)
