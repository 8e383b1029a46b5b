"""Batch k as a pure function of k, read ahead by grain threads: the resumable-iterator base.

Subclasses build `make_batch(step) -> dict` and call `_serve(make_batch, ...)`. The state is
{"step", "seed", "split", "batch_size", "seq_len"} (+ whatever `_extra_state` adds); `set_state`
refuses a state from a differently configured iterator and restarts reading at that step, so a
resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import sys
from typing import Callable

import grain

IDENTITY_KEYS = ("seed", "split", "batch_size", "seq_len")


class StepIndexedBatches:
    split: str
    seed: int
    batch_size: int
    seq_len: int

    def _serve(self, make_batch: Callable[[int], dict], loader_threads: int, prefetch: int) -> None:
        self._batches = grain.MapDataset.range(sys.maxsize).map(make_batch)
        self._read_options = grain.ReadOptions(num_threads=loader_threads,
                                               prefetch_buffer_size=prefetch)
        self._start(0)

    def _start(self, step: int) -> None:
        self.step = step
        self._it = iter(self._batches.slice(slice(step, None)).to_iter_dataset(self._read_options))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        self.step += 1
        self._on_batch(batch)
        return batch

    next = __next__

    def _on_batch(self, batch: dict) -> None:
        """Hook for counters (e.g. tokens per source)."""

    def _extra_state(self) -> dict:
        return {}

    def _restore_extra(self, state: dict) -> None:
        """Hook to restore what `_extra_state` saved."""

    def get_state(self) -> dict:
        return {"step": self.step, **{k: getattr(self, k) for k in IDENTITY_KEYS},
                **self._extra_state()}

    def set_state(self, state: dict) -> None:
        for k in IDENTITY_KEYS:
            if state[k] != getattr(self, k):
                raise ValueError(f"data state has {k}={state[k]!r}, iterator has {getattr(self, k)!r}")
        self._restore_extra(state)
        self._start(int(state["step"]))
