"""The pure, jit-compiled train step shared by every stage.

`make_train_step(loss_fn, tx, ...)` returns `train_step(state, batch, rng) -> (state, metrics)`
where `loss_fn(params, batch, rng) -> (loss, aux)`. With `grad_accum_steps = n` the global batch
is split into n microbatches (interleaved rows, so each device keeps its own rows and no data
moves) and gradients are accumulated in float32 under `lax.scan`, weighted by the tokens each
microbatch counts (`aux["num_tokens"]`), so the result equals one big batch for token-mean losses.

A step whose loss, gradient norm or updated params are not all finite is skipped inside the jit
(params and optimizer state are kept; `metrics["nonfinite"]` is 1), so non-finite values never
reach the params; the loop stops after `train.max_nonfinite_steps` such steps in a row.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gpt_jax.train.state import TrainState


def _split_microbatches(batch, n: int):
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} not divisible by grad_accum_steps={n}")
        return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def keep_if_finite(finite, new, old):
    """`new` where `finite`, else `old` (trees of the same shape): a step whose loss, gradients
    or updated params are not all finite leaves params and optimizer state as they were."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None, grad_accum_steps: int = 1):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        if grad_accum_steps == 1:
            (loss, aux), grads = grad_fn(state.params, batch, rng)
        else:
            micro = _split_microbatches(batch, grad_accum_steps)

            def accumulate(carry, xs):
                grads_sum, loss_sum, weight_sum, aux_sum = carry
                mb, i = xs
                (loss, aux), grads = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                w = aux.get("num_tokens", jnp.float32(1.0)).astype(jnp.float32)
                grads_sum = jax.tree.map(lambda a, g: a + w * g.astype(jnp.float32), grads_sum, grads)
                aux_sum = jax.tree.map(lambda a, v: a + w * v, aux_sum, aux)
                return (grads_sum, loss_sum + w * loss, weight_sum + w, aux_sum), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            first = jax.tree.map(lambda x: x[0], micro)
            aux_shape = jax.eval_shape(lambda: grad_fn(state.params, first, rng)[0][1])
            aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), aux_shape)
            (grads, loss, weight, aux), _ = jax.lax.scan(
                accumulate, (zeros, jnp.float32(0), jnp.float32(0), aux0),
                (micro, jnp.arange(grad_accum_steps)))
            weight = jnp.maximum(weight, 1e-9)
            grads = jax.tree.map(lambda g, p: (g / weight).astype(p.dtype), grads, state.params)
            loss = loss / weight
            aux = jax.tree.map(lambda v: v / weight, aux)
            if "num_tokens" in aux:
                aux["num_tokens"] = weight
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        # a non-finite loss, gradient or updated param skips the update (params and optimizer
        # state stay as they were; the step counter still advances); the loop counts the streak
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
        params = keep_if_finite(finite, params, state.params)
        opt_state = keep_if_finite(finite, opt_state, state.opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, **aux,
                   "nonfinite": 1.0 - finite.astype(jnp.float32)}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(loss_fn: Callable):
    """eval_step(params, batch) -> {"loss_sum", "num_tokens"} so means over batches are exact."""

    def eval_step(params, batch):
        loss, aux = loss_fn(params, batch, None)
        n = aux.get("num_tokens", jnp.float32(1.0)).astype(jnp.float32)
        return {"loss_sum": aux.get("nll", loss) * n, "num_tokens": n}

    return eval_step
