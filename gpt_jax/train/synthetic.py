"""Random-token batches, for tests, benchmarks and compile-only planning without a tokenizer.

The batch at step s is a pure function of (seed, s), so the iterator state is just the step.
Multi-process: each process returns only its rows of the global batch (process p of P: rows
p*B/P ... (p+1)*B/P - 1), as gpt_jax/data/pipeline.py's iterator does.
"""
from __future__ import annotations

import jax
import numpy as np


class SyntheticTokens:
    def __init__(self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.shape = (batch_size, seq_len + 1)
        self.vocab_size = vocab_size
        self.seed = seed
        self.step = 0
        self.bytes_per_token = None
        processes = jax.process_count()
        if batch_size % processes:
            raise ValueError(f"batch_size {batch_size} is not divisible by {processes} processes")
        self.local_batch = batch_size // processes
        self.row_offset = jax.process_index() * self.local_batch

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.step])
        self.step += 1
        tokens = rng.integers(0, self.vocab_size, self.shape, dtype=np.int32)
        return {"tokens": tokens[self.row_offset: self.row_offset + self.local_batch]}

    @property
    def tokens_by_source(self) -> dict[str, int]:
        """Tokens served so far, as pipelines that mix sources report them (one source here)."""
        return {"synthetic": self.step * self.shape[0] * (self.shape[1] - 1)}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
