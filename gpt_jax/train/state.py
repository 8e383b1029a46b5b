"""The train state pytree and its sharded creation.

`TrainState(step, params, opt_state)` holds only arrays (the optimizer's update function and
the model are closed over by the step function), so it goes through jit, donation and orbax as is.

Shardings come from the model's logical axis names: the abstract boxed params (from
`jax.eval_shape(model.init)`) give logical PartitionSpecs; optax state mirrors the params, so
running `tx.init` abstractly on the boxed params carries the same names to mu/nu. Concrete state
is created directly sharded by a jit with `out_shardings`, so no device ever holds it whole.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from gpt_jax import sharding as shd


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _abstract_boxed(init_params: Callable, tx: optax.GradientTransformation, rng):
    def boxed(r):
        params = init_params(r)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.eval_shape(boxed, rng)


def state_shardings(init_params: Callable, tx, mesh: Mesh, rng, rules=shd.RULES):
    """(abstract unboxed state, NamedSharding tree) for the state produced by `init_params`."""
    abstract = _abstract_boxed(init_params, tx, rng)
    specs = nn.get_partition_spec(abstract)
    unboxed = nn.unbox(abstract)
    return unboxed, shd.tree_shardings(specs, unboxed, mesh, rules)


def create_train_state(init_params: Callable, tx, mesh: Mesh, rng, rules=shd.RULES):
    """Initialises params (via `init_params(rng)`, possibly boxed) and optimizer state, sharded."""
    abstract, shardings = state_shardings(init_params, tx, mesh, rng, rules)

    def init(r):
        params = nn.unbox(init_params(r))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings


def state_from_params(params, tx, shardings):
    """A fresh TrainState (step 0, new optimizer state) around given params, placed per shardings."""

    def build(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))

    # params restored onto one device (checkpoint.load_stage) move onto the mesh first
    params = jax.device_put(params, shardings.params)
    return jax.jit(build, out_shardings=shardings)(params)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
