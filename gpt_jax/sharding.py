"""The device mesh and THE logical-axis rules table.

Every parameter and key activation in the model is annotated with logical axis names
(`embed`, `heads`, `mlp`, ...). `RULES` maps each name to mesh axes (`data`, `fsdp`, `tensor`).
Changing the parallelism strategy means editing this one table:

- data parallel:   batch over `data`; parameters replicated.
- FSDP (ZeRO-3):   batch also over `fsdp`; parameters' `embed` dimension sharded over `fsdp`,
                   so each device holds 1/fsdp of every weight and XLA all-gathers per layer.
- tensor parallel: `heads`, `kv_heads`, `mlp` and `vocab` over `tensor` (Megatron-style column/row
                   split of attention and MLP, vocab-parallel embedding and logits).

A dimension that the mesh axes do not divide (e.g. 4 kv heads on tensor=8) falls back to
replicated along that dimension rather than failing; `logical_to_spec` is the one place where that
decision is made, so tests can assert on it.

The mesh uses `AxisType.Auto` (GSPMD propagation from the annotated inputs/outputs plus explicit
`with_sharding_constraint` on activations), chosen deliberately over jax 0.10's default Explicit
axes, which would require every mixed-sharding op to be resharded by hand.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("pos", None),
    # activations
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one entry may be -1 meaning "all remaining devices".

    A mesh smaller than the device count uses the first devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) > len(devices):
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, have {len(devices)}")
    devices = devices[: math.prod(shape)]  # an explicit smaller mesh uses the first devices
    return jax.make_mesh(
        tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def mesh_from_config(mesh_config) -> Mesh:
    return make_mesh((mesh_config.data, mesh_config.fsdp, mesh_config.tensor))


def _rule_axes(name: str | None, rules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    raise KeyError(f"logical axis {name!r} has no entry in the rules table")


def logical_to_spec(
    names: Iterable[str | None], shape: Sequence[int], mesh: Mesh, rules=RULES
) -> P:
    """Maps logical names of an array of `shape` to a PartitionSpec on `mesh`.

    A mesh axis is used at most once per array, and only where its size divides the dimension
    (otherwise that dimension stays replicated along it).
    """
    names = tuple(names)
    if len(names) != len(shape):
        raise ValueError(f"logical names {names} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = []
        for axis in _rule_axes(name, rules):
            size = mesh.shape[axis]
            if axis in used or size == 1:
                continue
            if dim % (math.prod(mesh.shape[a] for a in axes) * size) == 0:
                axes.append(axis)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*spec)


def logical_to_sharding(names, shape, mesh: Mesh, rules=RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def constrain(x: jax.Array, names: Sequence[str | None], mesh: Mesh | None, rules=RULES):
    """`with_sharding_constraint` by logical names; a no-op without a mesh (single device)."""
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_sharding(names, x.shape, mesh, rules))


def tree_shardings(logical_specs, abstract_tree, mesh: Mesh, rules=RULES):
    """NamedShardings for a pytree, given its logical PartitionSpecs and abstract shapes. A node
    with no arrays (optax's MaskedNode, in a partitioned optimizer's state) stays as it is."""
    return jax.tree.map(
        lambda spec, leaf: leaf if not hasattr(leaf, "shape")
        else logical_to_sharding(tuple(spec), leaf.shape, mesh, rules)
        if len(spec) == len(leaf.shape)
        else NamedSharding(mesh, P()),
        logical_specs,
        abstract_tree,
        is_leaf=lambda x: isinstance(x, P),
    )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_parallelism(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
