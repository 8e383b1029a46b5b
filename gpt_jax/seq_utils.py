"""Small helpers on token rows shared by the sampler, scoring, the heads and the RL/SFT stages.

- `bucket`: power-of-two shape buckets, so a new batch rarely recompiles.
- `positions_from_valid`: position ids that count real tokens only (padding anywhere in a row).
- `last_valid_index`: the index of each row's last real token.
- `fit_prompt`: a prompt cut to a token budget, keeping BOS and the most recent tokens.
- `equal_chunks`: rows cut into generate() calls of one batch size.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= n, and at least `minimum`."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def length_bucket(n: int, minimum: int = 8) -> int:
    """A padded prompt length for `n` tokens: a power of two up to 64, then a multiple of 32.

    Few shapes to compile, but a 70-token prompt costs 96 slots of prefill and of KV cache read
    at every decode step, not 128."""
    return bucket(n, minimum) if n <= 64 else -(-int(n) // 32) * 32


def positions_from_valid(valid, start=None):
    """valid [B, T] (True/1 on real tokens) -> int32 positions [B, T]: real tokens before each one
    in its row (cumsum(valid) - 1, clipped at 0 for leading padding), plus `start` ([B, 1]: real
    tokens in earlier chunks) when given."""
    count = jnp.cumsum(valid, axis=-1)
    if start is not None:
        count = start + count
    return jnp.maximum(count - 1, 0).astype(jnp.int32)


def last_valid_index(valid):
    """valid [..., T] (bool or 0/1) -> int32 [...]: index of the last real token; 0 for a row
    with none."""
    t = valid.shape[-1]
    last = jnp.maximum(t - 1 - jnp.argmax(valid[..., ::-1], axis=-1), 0) * (valid.sum(-1) > 0)
    return last.astype(jnp.int32)


def fit_prompt(ids: Sequence[int], room: int) -> list[int]:
    """A prompt of at most `room` tokens: the first token (BOS) + the most recent ones."""
    ids = list(ids)
    return ids if len(ids) <= room else [ids[0]] + ids[len(ids) - room + 1:]


def equal_chunks(n: int, max_rows: int) -> list[slice]:
    """`n` rows cut into the fewest chunks of at most `max_rows`, all of one size but the last
    (200 rows at 32 -> 7 x 29: one compiled batch bucket per call, not a small remainder)."""
    chunks = -(-n // max(int(max_rows), 1))
    size = max(1, -(-n // max(chunks, 1)))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]
