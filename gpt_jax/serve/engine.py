"""The serving engine: continuous batching of requests over decode slots, on its own thread.

One loop (`_run`) owns the device state (`slots`) and repeats:
1. drop cancelled / timed-out rows and waiting requests (their slots are free at once);
2. admit waiting requests into free slots, FIFO: look the prompt up in the prefix cache, load the
   hit into the slot, prefill the rest (`slots.extend`), sample the first token;
3. resume rows whose tool call has returned: the call's end token and the result are prefilled as
   one chunk into the row, and it samples on (tools run on a thread pool, so a slow call, such as
   sandboxed Python, pauses its own row only);
4. one `slots.decode` step for every running row.
Each sampled token goes through `_accept`: end tokens, stop strings, max_tokens and the context
finish a row; a <|tool_call_end|> pauses it for its tool. A finished row's KV (prompt + reply)
goes to the prefix cache, so the next turn of its chat starts from there.

Admission control: at most `max_queue` rows (a request's `n` choices are n rows) wait for a slot
beyond the free ones; `submit` raises `QueueFull` past that (the server answers 429). Every
request has a deadline; past it, its rows end "timeout".
The engine knows nothing of HTTP: requests come in as `requests.Request` and leave as events.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import numpy as np

from gpt_jax import sampling, structured
from gpt_jax.engine_tools import ToolIds, open_call, result_ids, run_tool
from gpt_jax.model import GPTConfig
from gpt_jax.seq_utils import bucket
from gpt_jax.serve import slots
from gpt_jax.serve.prefix_cache import PrefixCache
from gpt_jax.serve.requests import Delta, Done, Finish, Request, RowText, TokenLogprob

log = logging.getLogger("gpt_jax.serve")
N_TOP = 20  # most top_logprobs a request may ask (OpenAI's limit)
SHRINK_AFTER_STEPS = 32  # decode steps with a quarter or less of the slots cache in use


class QueueFull(RuntimeError):
    pass


@dataclasses.dataclass(eq=False)
class _Row:
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


class Engine:
    def __init__(self, params, config: GPTConfig, tokenizer, n_slots: int = 8,
                 max_queue: int = 64, prefix_cache_mb: float = 256, tool_workers: int = 4,
                 adapters: dict | None = None):
        """`adapters`: {name: lora.Adapter} of this base model; a request names one (or none)
        and its rows run through it inside the shared batch (`gpt_jax.lora_batch`)."""
        self.config, self.params = sampling.unstack_layers(config, params)
        self.adapters = None
        if adapters:
            from gpt_jax.lora_batch import AdapterTable, weight_shapes

            self.adapters = AdapterTable.build(self.config, adapters,
                                               weight_shapes(self.params["block_0"]))
        self.tok, self.n_slots, self.max_queue = tokenizer, int(n_slots), int(max_queue)
        self.max_len = config.max_seq_len + 64  # room for a chunk's bucket padding at the end
        self.vocab_limit = min(config.vocab_size, tokenizer.vocab_size)
        self.cache = slots.init_slots(self.config, 1, 64)  # grown and cut as rows come and go
        self._no_prefix = np.zeros((config.n_layers, self.config.kv_heads, 16,
                                    self.config.head_dim), np.float32)
        self.resizes = 0
        self._small_steps = 0
        self.prefix = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        try:
            self.tool_ids = ToolIds.of(tokenizer)
        except KeyError:
            self.tool_ids = None
        self.rows: list[_Row | None] = [None] * self.n_slots
        self.waiting: collections.deque[Request] = collections.deque()
        self._lock = threading.Condition()
        self._stop = False
        self._tools = ThreadPoolExecutor(max_workers=tool_workers, thread_name_prefix="tool")
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- the outside: submit, cancel, start, stop ------------------------------------------------
    def submit(self, request: Request) -> None:
        if request.n > self.n_slots:
            raise ValueError(f"n={request.n} exceeds the {self.n_slots} decode slots")
        self.adapter_index(request.adapter)  # an unknown one is refused here
        if len(request.prompt) + request.max_tokens > self.config.max_seq_len:
            raise ValueError(f"{len(request.prompt)} prompt tokens + max_tokens="
                             f"{request.max_tokens} exceed the context of "
                             f"{self.config.max_seq_len} tokens")
        with self._lock:
            # rows that would wait once the free slots are taken (admission happens between
            # decode steps, so a burst that fits the free slots must not count as queued)
            free = self.n_slots - self.busy_slots()
            waiting = sum(q.n for q in self.waiting) + request.n - free
            if waiting > self.max_queue:
                raise QueueFull(f"all {self.n_slots} slots are busy and {self.max_queue} rows "
                                "already wait for one")
            self.waiting.append(request)
            self._lock.notify()

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
        self._tools.shutdown(wait=False, cancel_futures=True)

    def adapter_index(self, name: str | None) -> int:
        if name is None:
            return 0
        if self.adapters is None:
            raise ValueError(f"adapter {name!r}: this engine has no adapters")
        try:
            return self.adapters.index(name)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None

    def _lora(self, ids) -> tuple | None:
        """The `lora` argument of a device step for rows with these adapter indices: None when
        no row uses one (the programs without the low-rank path: loading adapters costs the
        base model's requests nothing)."""
        ids = np.asarray(ids, np.int32)
        if self.adapters is None or not ids.any():
            return None
        return self.adapters.layers, ids

    def busy_slots(self) -> int:
        return sum(r is not None for r in self.rows)

    def compile_constraint(self, constraint: structured.Constraint, stop_ids):
        """The compiled grammar a `Request.grammar` takes; raises `structured.ConstraintError`
        (invalid, or over 5 s to compile). Blocking: call it off the event loop."""
        lltok = structured.grammar_tokenizer(self.tok, self.config.vocab_size, stop_ids)
        return structured.compile_constraint(constraint, lltok)

    def warmup(self, max_chunk: int = 256) -> None:
        """Compiles the serving programs before the first request (`serve.warmup`)."""
        from gpt_jax.serve.warmup import warmup

        warmup(self, max_chunk)

    # -- device calls ----------------------------------------------------------------------------
    def _col_buckets(self) -> list[int]:
        cols, out = 64, []
        while True:
            out.append(cols)
            if cols >= self.max_len:
                return out
            cols = min(self.max_len, 2 * cols)

    def _width(self, start: int, n: int) -> int:
        """Columns a row needs to take n more tokens at `start`, with room for a chunk's padding."""
        return min(self.max_len, bucket(start + n + 8, 64))

    def _row_bucket(self, n: int) -> int:
        """Rows as a power of 4 (at most the slots): few decode programs to compile."""
        return min(self.n_slots, 4 ** max(0, math.ceil(math.log(max(n, 1), 4) - 1e-9)))

    def _fit(self, n_rows: int, n_cols: int, shrink: bool = False) -> None:
        """Resizes the slots to hold rows [0, n_rows) (a power of 4) and columns [0, n_cols) (a
        power of two): grown when short; with `shrink`, cut when a quarter or less is in use."""
        rows, cols = slots.cache_shape(self.cache)
        want = (self._row_bucket(n_rows), min(self.max_len, bucket(n_cols, 64)))
        if want[0] > rows or want[1] > cols:
            want = (max(want[0], rows), max(want[1], cols))
        elif shrink and (4 * want[0] <= rows or 4 * want[1] <= cols):
            self._small_steps += 1  # cut only after a while: each new shape may compile
            if self._small_steps < SHRINK_AFTER_STEPS and any(r is not None for r in self.rows):
                return
        else:
            self._small_steps = 0
            return
        self._small_steps = 0
        self.cache = slots.resize(self.cache, *want)
        self.resizes += 1

    def _extend(self, slot: int, prefix, start: int, ids: list[int], row: tuple,
                st: slots.SlotStatic, bitmask=None, adapter: int = 0):
        """Prefills ids into `slot` at `start`: from the slot's own columns, or from `prefix`
        ((keys, values, n) of a prefix-cache hit, or None: an empty row) when it is new."""
        self._fit(slot + 1, self._width(start, len(ids)))
        width = slots.cache_shape(self.cache)[1]  # the row as wide as the slots: few programs
        if start == 0 or prefix is not None:
            keys, values, n = prefix or (self._no_prefix, self._no_prefix, 0)
            pad = [(0, 0), (0, 0), (0, width - keys.shape[2]), (0, 0)]  # one program per width
            cache_row = slots.row_from_prefix(self.config, np.pad(keys, pad), np.pad(values, pad),
                                              np.int32(n), width)
        else:
            cache_row = slots.take_row(self.cache, np.int32(slot))
        sampling_row = slots.RowSampling.of([row])
        pos, rest = start, list(ids)
        while rest:  # power-of-two chunks (few programs): 580 tokens go as 512 + 64 + 4 (in 8)
            t = min(max(8, 1 << (len(rest).bit_length() - 1)), 1 << ((width - pos).bit_length() - 1))
            n = min(len(rest), t)
            chunk = np.zeros((1, t), np.int32)
            chunk[0, :n] = rest[:n]
            cache_row, out = slots.extend(self.params, st, cache_row, np.int32(pos), chunk,
                                          np.int32(n), sampling_row, bitmask,
                                          self._lora([adapter]))
            pos, rest = pos + n, rest[n:]
        self.cache = slots.put_row(self.cache, cache_row, np.int32(slot))
        return jax.device_get(out)  # sampled after the last chunk

    def _decode(self, active: np.ndarray, st: slots.SlotStatic, warm_adapter: int = 0):
        """One decode step of the active slots (`warm_adapter`: the adapter of active slots with
        no row, for the warm-up)."""
        n = slots.cache_shape(self.cache)[0]
        tokens = np.zeros(n, np.int32)
        lengths = np.zeros(n, np.int32)
        rows = [(0.0, 1.0, 0, 0, 0, 0)] * n
        adapters = np.where(active[:n], warm_adapter, 0).astype(np.int32)
        constrained = {}
        for r in self.rows:
            if r is not None and r.slot < n and active[r.slot]:
                tokens[r.slot], lengths[r.slot] = r.next_token, r.length
                adapters[r.slot] = r.adapter
                rows[r.slot] = self._row_params(r)
                if r.matcher is not None and not r.forced:  # it samples this step
                    constrained[r.slot] = r.matcher
        bitmask = None
        if constrained:
            bitmask = structured.fill_masks(constrained,
                                            structured.new_bitmask(n, self.config.vocab_size))
        self.cache, out = slots.decode(self.params, st, self.cache, tokens, lengths,
                                       active[:n], slots.RowSampling.of(rows), bitmask,
                                       self._lora(adapters))
        return jax.device_get(out)

    @staticmethod
    def _row_params(r: _Row) -> tuple:
        q = r.request
        return (q.temperature, q.top_p, q.top_k, q.seed, r.choice, r.generated)

    def _static(self, requests) -> slots.SlotStatic:
        return slots.static_for(self.config, self.vocab_limit, requests, N_TOP)

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while (not self._stop and not self.waiting
                       and not any(r is not None for r in self.rows)):
                    self._lock.wait(timeout=0.5)
                if self._stop:
                    return
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a bug must not leave clients hanging
                log.exception("engine step failed; failing its rows")
                for r in [r for r in self.rows if r is not None]:
                    self._finish(r, "error")
                self.cache = slots.init_slots(self.config, 1, 64)

    def _step(self) -> None:
        now = time.monotonic()
        self._expire(now)
        self._admit()
        for r in [r for r in self.rows if r is not None and r.tool_future is not None]:
            if r.tool_future.done():
                self._resume_after_tool(r)
        running = [r for r in self.rows if r is not None and r.tool_future is None]
        if not running:
            if any(r is not None for r in self.rows):
                time.sleep(0.002)  # only rows waiting on tools
            return
        present = [r for r in self.rows if r is not None]
        self._fit(max(r.slot for r in present) + 1, max(r.length for r in present) + 1,
                  shrink=True)
        active = np.zeros(self.n_slots, bool)
        for r in running:
            active[r.slot] = True
        out = self._decode(active, self._static([r.request for r in running]))
        self.steps += 1
        for r in running:
            r.tokens.append(r.next_token)
            r.length += 1
            if r.forced:  # fed one per step; this step's sample for the row is not used
                self._take(r, r.forced.pop(0), None)
            else:
                self._accept(r, out, r.slot)

    def _expire(self, now: float) -> None:
        with self._lock:
            keep = collections.deque()
            for q in self.waiting:
                reason = ("cancelled" if q.cancelled.is_set() else
                          "timeout" if now > q.deadline else None)
                if reason is None:
                    keep.append(q)
                    continue
                for c in range(q.n):
                    q.on_event(Finish(c, reason))
                q.on_event(Done(len(q.prompt), 0, 0))
            self.waiting = keep
        for r in [r for r in self.rows if r is not None]:
            if r.request.cancelled.is_set():
                self._finish(r, "cancelled")
            elif now > r.request.deadline:
                self._finish(r, "timeout")

    def _admit(self) -> None:
        while True:
            free = [i for i, r in enumerate(self.rows) if r is None]
            with self._lock:
                if not self.waiting or len(free) < self.waiting[0].n:
                    return
                q = self.waiting.popleft()
            self._fit(free[q.n - 1] + 1 + len(self.waiting), 64)  # grow once for a burst
            for choice in range(q.n):
                self._insert(q, choice, free[choice])

    def _insert(self, q: Request, choice: int, slot: int) -> None:
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
        r = _Row(q, choice, slot, RowText(self.tok, q.stop_ids, q.stop_strings),
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
        out = self._extend(slot, prefix, n_cached, ids[n_cached:], self._row_params(r),
                           self._static([q]), bitmask, adapter)
        r.prefilled = True
        self._accept(r, out, 0)  # the first token goes out before the prompt's KV is stored
        if self.rows[slot] is r:
            self._store_prefix(r, upto=len(q.prompt))

    def _resume_after_tool(self, r: _Row) -> None:
        try:
            result = r.tool_future.result()
        except Exception as e:  # noqa: BLE001 - run_tool already turns errors into text
            result = f"error: {type(e).__name__}: {e}"
        r.tool_future = None
        inserted = [r.next_token, *result_ids(self.tok, result)]
        room = self.config.max_seq_len - r.length - 1  # keep one column for the next token
        if len(inserted) > room or r.generated + len(inserted) - 1 > r.request.max_tokens:
            self._finish(r, "length")
            return
        r.request.on_event(Delta(r.choice, r.text.add(inserted[1:]), (),
                                 {"name": r.request.tool_name, "input": r.tool_expr,
                                  "output": result}))
        start = r.length
        r.tokens.extend(inserted)
        r.length += len(inserted)
        r.generated += len(inserted) - 1  # the result counts toward max_tokens and usage
        r.request.completion_tokens += len(inserted) - 1
        out = self._extend(r.slot, None, start, inserted, self._row_params(r),
                           self._static([r.request]), adapter=r.adapter)
        self._accept(r, out, 0)

    def _accept(self, r: _Row, out: slots.Sampled, i: int) -> None:
        """Row `r` sampled out[i]: record it and decide whether it goes on."""
        q, token = r.request, int(out.token[i])
        lp = None
        if q.logprobs is not None:
            top = tuple((int(t), float(x)) for t, x in
                        zip(out.top_ids[i][: q.logprobs], out.top_logprobs[i][: q.logprobs]))
            lp = TokenLogprob(token, float(out.logprob[i]), top)
        if not self._take(r, token, lp):
            return
        if r.matcher is not None:
            try:
                forced = r.matcher.advance(token)
            except RuntimeError:  # the mask left nothing valid: this row fails, not the engine
                log.exception("constrained row rejected its own token")
                self._finish(r, "error")
                return
            if r.matcher.done:  # complete: its forced tail goes out, and the row ends
                if all(self._take(r, f, None) for f in forced):
                    self._finish(r, "stop")
                return
            r.forced = forced
        elif q.tool is not None and self.tool_ids is not None and token == self.tool_ids.call_end:
            r.tool_expr = open_call(self.tok, r.tokens[len(q.prompt):] + [token])
            r.tool_future = self._tools.submit(run_tool, q.tool, r.tool_expr)

    def _take(self, r: _Row, token: int, lp: TokenLogprob | None) -> bool:
        """Appends `token` to row `r`'s reply (sampled with log-prob `lp`, or forced by its
        grammar: log-prob 0), streams its text, and ends the row on a stop or a limit. Returns
        whether the row goes on."""
        q = r.request
        r.next_token = token
        r.generated += 1
        q.completion_tokens += 1
        if q.logprobs is not None:
            r.pending_logprobs.append(lp or TokenLogprob(token, 0.0,
                                                         ((token, 0.0),)[: q.logprobs]))
        if token in q.stop_ids:
            self._finish(r, "stop")
            return False
        text = r.text.add([token])
        if text or r.pending_logprobs:
            q.on_event(Delta(r.choice, text, tuple(r.pending_logprobs)))
            r.pending_logprobs = []
        if q.moderate is not None and r.generated % max(1, q.moderate_every) == 0 \
                and q.moderate(self._reply_text(r)):
            self._finish(r, "content_filter")
        elif r.text.stopped:
            self._finish(r, "stop")
        elif r.generated >= q.max_tokens or r.length >= self.config.max_seq_len:
            self._finish(r, "length")
        else:
            return True
        return False

    def _reply_text(self, r: _Row) -> str:
        ids = r.tokens[len(r.request.prompt):] + [r.next_token]
        return self.tok.decode([t for t in ids if not self.tok.is_special(t)
                                and t < self.tok.vocab_size])

    def _finish(self, r: _Row, reason: str) -> None:
        q = r.request
        if reason in ("stop", "length") and q.moderate is not None \
                and q.moderate(self._reply_text(r)):
            reason = "content_filter"  # the reply's end, unchecked since the last check
        if reason in ("stop", "length"):
            self._store_prefix(r, upto=r.length)
        tail = r.text.flush() if reason in ("stop", "length") else ""
        if tail or r.pending_logprobs:
            q.on_event(Delta(r.choice, tail, tuple(r.pending_logprobs)))
        self.rows[r.slot] = None
        if all(x is None for x in self.rows) and slots.cache_shape(self.cache) != (1, 64):
            self.cache = slots.init_slots(self.config, 1, 64)  # idle: start small again
        q.on_event(Finish(r.choice, reason))
        q.finished_choices += 1
        if q.finished_choices == q.n:
            q.on_event(Done(len(q.prompt), q.completion_tokens, q.cached_tokens))

    def _store_prefix(self, r: _Row, upto: int) -> None:
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
