"""Checkpoints: orbax CheckpointManager over (train state, data-iterator state, run metadata).

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint intact and the partial one is ignored on restore.
Restoring takes an abstract state carrying the target shardings, so a checkpoint saved on one
mesh restores onto another.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_with_shardings(abstract_tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
    )


class Checkpointer:
    """Saves/restores {"state": pytree, "data": JSON, "meta": JSON} under `<directory>/<step>`."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict | None = None, meta: dict | None = None,
             wait: bool = False) -> None:
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state or {}),
                meta=ocp.args.JsonSave(meta or {}),
            ),
        )
        if wait:
            self.manager.wait_until_finished()

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, dict]:
        """(state, data_state, meta) at `step` (default: latest), placed as abstract_state says."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _default_sharding(abstract_tree):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda a: a if getattr(a, "sharding", None) is not None
        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_tree)


def restore_params(directory: str | os.PathLike, abstract_params, step: int | None = None):
    """Only the params of a checkpoint (default: latest step); how a stage reads its parent.

    `abstract_params` leaves may carry shardings; those without one land on the first device.
    """
    ckpt = Checkpointer(directory, async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    item = {"params": _default_sharding(abstract_params)}
    restored = ckpt.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)))
    ckpt.close()
    return restored["state"]["params"]


def load_stage(workdir: str | os.PathLike, stage: str, step: int | None = None):
    """(GPTConfig, params) of `<workdir>/<stage>`, from its saved config.json: the stage's
    `final/` params when it saved them (PPO: the policy alone), else its latest checkpoint."""
    import json
    from pathlib import Path

    import flax.linen as nn
    import jax.numpy as jnp

    from gpt_jax.model import GPT, GPTConfig

    stage_dir = Path(workdir) / stage
    config_path = stage_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: has stage {stage!r} run in {workdir}?")
    config = GPTConfig.from_config(json.loads(config_path.read_text())["model"])
    abstract = jax.eval_shape(lambda: nn.unbox(
        GPT(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
    final = stage_dir / "final"
    if step is None and final.exists():
        return config, restore_params(final, abstract)
    return config, restore_params(stage_dir / "checkpoints", abstract, step)
