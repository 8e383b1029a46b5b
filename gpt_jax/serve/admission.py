"""Admission into the serving engine's decode slots (the `Admission` half of `engine.Engine`):
waiting requests take free slots FIFO, each choice a `Row`; a prompt is looked up in the prefix
cache, the hit loaded into the slot and the rest prefilled (`slots.extend`), and the first token
sampled. New rows of one admission whose short prompts have nothing cached are prefilled together
(`SlotDevice._prefill_new`: a burst of 64 requests is one device call, not 64). A finished
prompt's KV goes to the prefix cache (`_store_prefix`), as a finished reply's does.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import Future

import numpy as np

from gpt_jax import structured
from gpt_jax.serve import slots
from gpt_jax.serve.device import BATCH_PREFILL_MAX
from gpt_jax.serve.requests import Request, RowText


@dataclasses.dataclass(eq=False)
class Row:
    """One choice of a request in its decode slot: what the host knows of it."""

    request: Request
    choice: int
    slot: int
    text: RowText
    length: int = 0  # columns of the slot holding this row's tokens
    tokens: list = dataclasses.field(default_factory=list)  # prompt + every token in the cache
    next_token: int = -1  # sampled, not yet in the cache
    generated: int = 0
    pending_logprobs: list = dataclasses.field(default_factory=list)
    tool_future: Future | None = None
    tool_expr: str | None = None
    matcher: structured.RowMatcher | None = None  # a constrained row's place in its grammar
    prefilled: bool = False  # its prompt is in the slot's cache (the prefix cache may read it)
    adapter: int = 0  # index in the engine's adapter table (0: the base model)
    forced: list = dataclasses.field(default_factory=list)  # forced tokens not yet fed
    inflight: int = 0  # dispatched decode steps of this row not read back yet (0 or 1)


class Admission:
    """Mixed into `engine.Engine` (which supplies the queue, `rows`, `prefix`, `_accept`, `_take`,
    `_finish` and the device calls)."""

    def _admit(self) -> None:
        """Waiting requests into free slots, FIFO; new rows whose prompt is one short chunk with
        nothing cached are prefilled together (`_prefill_new`: a burst of 64 requests is one
        device call, not 64), the others one by one."""
        together: list[tuple[Row, list[int]]] = []
        with self._lock:  # the columns the waiting prompts need (an empty cache starts so wide)
            cols = max((self._width(0, len(q.prompt)) for q in self.waiting), default=64)
        while True:
            free = [i for i, r in enumerate(self.rows) if r is None]
            with self._lock:
                if not self.waiting or len(free) < self.waiting[0].n:
                    break
                q = self.waiting.popleft()
            self._fit(free[q.n - 1] + 1 + len(self.waiting), cols)  # grow once for a burst
            for choice in range(q.n):
                if (new := self._insert(q, choice, free[choice], defer=True)) is not None:
                    together.append(new)
        if len(together) == 1:  # alone: the one-row program (`_extend`)
            self._prefill(*together[0])
        elif together:
            rows = [r for r, _ in together]
            out = self._prefill_new(rows, [ids for _, ids in together],
                                    self._static([r.request for r in rows]))
            for i, r in enumerate(rows):
                self._prefilled(r, out, i)

    def _insert(self, q: Request, choice: int, slot: int,
                defer: bool = False) -> tuple[Row, list[int]] | None:
        """Starts choice `choice` of `q` in `slot` and prefills its prompt; with `defer`, a row
        that `_prefill_new` can take (nothing cached, no grammar, a short prompt) is returned
        as (row, prompt) instead, for the caller to prefill with others."""
        ids = list(q.prompt)
        adapter = self.adapter_index(q.adapter)
        n_cached, keys, values = 0, None, None
        if self.prefix is not None:  # at least one token is left to prefill (for the logits)
            n_cached, keys, values = self.prefix.lookup(ids, limit=len(ids) - 1, salt=adapter)
        prefix = None
        if n_cached:
            prefix = (keys, values, n_cached)
        if choice == 0:
            q.cached_tokens = n_cached
        r = Row(q, choice, slot, RowText(self.tok, q.stop_ids, q.stop_strings),
                 length=len(ids), tokens=ids, adapter=adapter)
        self.rows[slot] = r
        bitmask = None
        if q.grammar is not None:  # the grammar's forced start is prefilled with the prompt
            r.matcher = structured.RowMatcher(q.grammar)
            for token in r.matcher.forced():
                if not self._take(r, token, None):
                    return
                ids.append(token)
                r.length += 1
            if r.matcher.done:
                self._finish(r, "stop")
                return
            bitmask = structured.fill_masks({0: r.matcher},
                                            structured.new_bitmask(1, self.config.vocab_size))
        if defer and not n_cached and bitmask is None and len(ids) <= BATCH_PREFILL_MAX:
            return r, ids
        self._prefill(r, ids, prefix, n_cached, bitmask)
        return None

    def _prefill(self, r: Row, ids: list[int], prefix=None, n_cached: int = 0,
                 bitmask=None) -> None:
        """Row `r`'s prompt `ids` (its first n_cached from `prefix`) into its slot, alone."""
        out = self._extend(r.slot, prefix, n_cached, ids[n_cached:], self._row_params(r),
                           self._static([r.request]), bitmask, r.adapter)
        self._prefilled(r, out, 0)

    def _prefilled(self, r: Row, out: slots.Sampled, i: int) -> None:
        r.prefilled = True
        self._accept(r, out, i)  # the first token goes out before the prompt's KV is stored
        if self.rows[r.slot] is r:
            self._store_prefix(r, upto=len(r.request.prompt))

    def _store_prefix(self, r: Row, upto: int) -> None:
        if self.prefix is None or not r.prefilled:
            return
        tokens = r.tokens[:upto]
        have = self.prefix.missing_from(tokens, r.adapter)
        n = len(tokens) // self.prefix.block * self.prefix.block
        if n <= have:
            return
        width = slots.cache_shape(self.cache)[1]  # the whole row: one program per slots shape
        keys, values = (np.asarray(x) for x in slots.read_prefix(self.cache, np.int32(r.slot),
                                                                 width))
        self.prefix.store(tokens[:n], keys, values, start=have, salt=r.adapter)
