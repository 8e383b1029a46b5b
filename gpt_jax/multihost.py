"""Helpers for runs over several JAX processes (multi-host; see docs/multihost.md).

In a multi-process run every process executes the same program, but files that describe the run
as a whole (config.json, lineage.json, metrics.jsonl, summary.json, token caches) must be written
once: by the primary process (process 0), with the others waiting for it where they then read
what it wrote. Orbax checkpoints coordinate their own writes. With one process all of this is a
no-op.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import jax

T = TypeVar("T")


def is_primary() -> bool:
    """True in process 0 (and in every single-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def primary_first(fn: Callable[[], T], name: str) -> T:
    """fn() in process 0 first, then (after a barrier) in the others: for steps that create
    shared files which the other processes then only read. The barrier is passed even when
    process 0 raises, so the others run fn() too (and normally raise the same error)."""
    if jax.process_count() == 1:
        return fn()
    if is_primary():
        try:
            return fn()
        finally:
            barrier(name)
    barrier(name)
    return fn()
