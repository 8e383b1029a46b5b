"""The serving engine: continuous batching of requests over decode slots, on its own thread.

One loop (`_run`) owns the device state (`slots`) and repeats:
1. drop cancelled / timed-out rows and waiting requests (their slots are free at once);
2. admit waiting requests into free slots, FIFO: look the prompt up in the prefix cache, load the
   hit into the slot, prefill the rest (`slots.extend`), sample the first token; the short
   prompts of one admission with nothing cached are prefilled together (`slots.prefill_rows`);
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
Its device side (params, the slots' cache and its size, the jitted calls, LoRA adapters) is the
base class `device.SlotDevice`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from gpt_jax import structured
from gpt_jax.engine_tools import ToolIds, open_call, result_ids, run_tool
from gpt_jax.model import GPTConfig
from gpt_jax.serve import slots
from gpt_jax.serve.device import BATCH_PREFILL_MAX, SlotDevice
from gpt_jax.serve.prefix_cache import PrefixCache
from gpt_jax.serve.requests import Delta, Done, Finish, Request, RowText, TokenLogprob

log = logging.getLogger("gpt_jax.serve")


# idle this long (no row, nothing waiting), the slots cache starts small again; not at once: the
# clients of a burst that just ended send their next requests within milliseconds
IDLE_SHRINK_S = 0.5


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


class Engine(SlotDevice):
    def __init__(self, params, config: GPTConfig, tokenizer, n_slots: int = 8,
                 max_queue: int = 64, prefix_cache_mb: float = 256, tool_workers: int = 4,
                 adapters: dict | None = None, step_delay_s: float = 0.0):
        """`adapters`: {name: lora.Adapter} of this base model; a request names one (or none)
        and its rows run through it inside the shared batch (`gpt_jax.lora_batch`).
        `step_delay_s`: a pause after each decode step (tests that must act while a reply
        streams, on hosts fast enough to finish it first; demos of streaming)."""
        super().__init__(params, config, tokenizer, n_slots, adapters)
        self.max_queue, self.step_delay_s = int(max_queue), float(step_delay_s)
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

    def busy_slots(self) -> int:
        return sum(r is not None for r in self.rows)

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while (not self._stop and not self.waiting
                       and not any(r is not None for r in self.rows)):
                    if not self._lock.wait(timeout=IDLE_SHRINK_S) \
                            and slots.cache_shape(self.cache) != (1, 64):
                        self.cache = slots.init_slots(self.config, 1, 64)  # idle: small again
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
        if self.step_delay_s > 0:
            time.sleep(self.step_delay_s)
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
        """Waiting requests into free slots, FIFO; new rows whose prompt is one short chunk with
        nothing cached are prefilled together (`_prefill_new`: a burst of 64 requests is one
        device call, not 64), the others one by one."""
        together: list[tuple[_Row, list[int]]] = []
        while True:
            free = [i for i, r in enumerate(self.rows) if r is None]
            with self._lock:
                if not self.waiting or len(free) < self.waiting[0].n:
                    break
                q = self.waiting.popleft()
            self._fit(free[q.n - 1] + 1 + len(self.waiting), 64)  # grow once for a burst
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
                defer: bool = False) -> tuple[_Row, list[int]] | None:
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
        if defer and not n_cached and bitmask is None and len(ids) <= BATCH_PREFILL_MAX:
            return r, ids
        self._prefill(r, ids, prefix, n_cached, bitmask)
        return None

    def _prefill(self, r: _Row, ids: list[int], prefix=None, n_cached: int = 0,
                 bitmask=None) -> None:
        """Row `r`'s prompt `ids` (its first n_cached from `prefix`) into its slot, alone."""
        out = self._extend(r.slot, prefix, n_cached, ids[n_cached:], self._row_params(r),
                           self._static([r.request]), bitmask, r.adapter)
        self._prefilled(r, out, 0)

    def _prefilled(self, r: _Row, out: slots.Sampled, i: int) -> None:
        r.prefilled = True
        self._accept(r, out, i)  # the first token goes out before the prompt's KV is stored
        if self.rows[r.slot] is r:
            self._store_prefix(r, upto=len(r.request.prompt))

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
