"""Prefix cache: the KV of token prefixes already computed, reused by later requests.

Blocks of `block` tokens are keyed by a hash chained over every token before them (vLLM's
automatic prefix caching), so a key names a whole prefix, not a block's own tokens. Values are
host arrays (keys, values) [L, K, block, D]; least recently used blocks go first once the byte
budget is exceeded. A chat's next turn re-sends its history: the blocks the last turn stored (its
prompt and reply) match, and only the new tail is prefilled.

Host memory, not device: on a CPU host they are the same, and the copy of a hit into a slot is
one `slots.row_from_prefix`. Thread-safe (the scheduler thread is the only writer, but stats are read
by the server).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np


class PrefixCache:
    def __init__(self, budget_bytes: int, block: int = 16):
        self.budget, self.block = int(budget_bytes), int(block)
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.lookups = self.hit_tokens = 0

    def _keys(self, tokens: Sequence[int], n_blocks: int, salt: int = 0) -> list[int]:
        keys, h = [], (0 if salt == 0 else hash(("salt", salt)))
        for i in range(n_blocks):
            h = hash((h, tuple(int(t) for t in tokens[i * self.block: (i + 1) * self.block])))
            keys.append(h)
        return keys

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, tokens: Sequence[int], limit: int, salt: int = 0
               ) -> tuple[int, np.ndarray | None, np.ndarray | None]:
        """(n, keys [L, K, n, D], values) for the longest cached prefix of at most `limit` tokens
        (n a multiple of the block; (0, None, None) on a miss). `salt` keeps apart prefixes
        whose KV differs for the same tokens (each LoRA adapter's rows: 0, the base model)."""
        found = []
        with self._lock:
            self.lookups += 1
            keys = self._keys(tokens, min(limit, len(tokens)) // self.block, salt)
            for key in keys:
                kv = self._blocks.get(key)
                if kv is None:
                    break
                found.append(kv)
            self._touch(keys[:len(found)])
            if not found:
                return 0, None, None
            self.hits += 1
            self.hit_tokens += len(found) * self.block
        return (len(found) * self.block, np.concatenate([k for k, _ in found], axis=2),
                np.concatenate([v for _, v in found], axis=2))

    def missing_from(self, tokens: Sequence[int], salt: int = 0) -> int:
        """Tokens (a block multiple) at the start of `tokens` already stored in full."""
        n = 0
        with self._lock:
            for key in self._keys(tokens, len(tokens) // self.block, salt):
                if key not in self._blocks:
                    break
                n += self.block
        return n

    def store(self, tokens: Sequence[int], keys: np.ndarray, values: np.ndarray,
              start: int = 0, salt: int = 0) -> None:
        """Stores the full blocks of `tokens` whose KV is keys/values [L, K, >= len, D] (columns
        from 0), skipping the first `start` tokens' blocks (already stored)."""
        n_blocks = len(tokens) // self.block
        with self._lock:
            hashes = self._keys(tokens, n_blocks, salt)
            for i, key in enumerate(hashes):
                if i * self.block < start or key in self._blocks:
                    continue
                sl = slice(i * self.block, (i + 1) * self.block)
                kv = (np.ascontiguousarray(keys[:, :, sl]), np.ascontiguousarray(values[:, :, sl]))
                self._blocks[key] = kv
                self._bytes += kv[0].nbytes + kv[1].nbytes
            self._touch([h for h in hashes if h in self._blocks])
            while self._bytes > self.budget and self._blocks:
                _, (k, v) = self._blocks.popitem(last=False)
                self._bytes -= k.nbytes + v.nbytes

    def _touch(self, keys: list[int]) -> None:
        """Marks a prefix's blocks used, its first block last: eviction then takes a prefix's tail
        before its head (a head evicted first would orphan every block after it)."""
        for key in reversed(keys):
            self._blocks.move_to_end(key)

    def stats(self) -> dict:
        with self._lock:
            return {"blocks": len(self._blocks), "bytes": self._bytes, "lookups": self.lookups,
                    "hits": self.hits, "hit_tokens": self.hit_tokens}
