"""The serving engine: continuous batching of requests over decode slots, on its own thread.

One loop (`_run`) owns the device state (`slots`) and repeats:
1. drop cancelled / timed-out rows and waiting requests (their slots are free at once);
2. admit waiting requests into free slots, FIFO (`admission.Admission`): look the prompt up in
   the prefix cache, load the hit into the slot, prefill the rest (`slots.extend`), sample the
   first token; the short prompts of one admission with nothing cached are prefilled together
   (`slots.prefill_rows`);
3. resume rows whose tool call has returned: the call's end token and the result are prefilled as
   one chunk into the row, and it samples on (tools run on a thread pool, so a slow call, such as
   sandboxed Python, pauses its own row only);
4. dispatch one `slots.decode` step for every running row, then read the PREVIOUS step back
   (`_collect`) while the device computes this one. A row's input is the last step's sample
   still on the device (`chained`): the host's bookkeeping, the events and the HTTP layer run
   beside the device instead of between its steps (vLLM's async scheduling, SGLang's overlap
   scheduler). A row that ends, or pauses for a tool, when its token is read back has one more
   step in flight; that step's sample is dropped. Constrained rows need the host's grammar state
   for each step's mask: while one runs, each step is read back before the next.
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
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import numpy as np

from gpt_jax.engine_tools import ToolIds, open_call, result_ids, run_tool
from gpt_jax.model import GPTConfig
from gpt_jax.serve import slots
from gpt_jax.serve.admission import Admission, Row
from gpt_jax.serve.device import SlotDevice
from gpt_jax.serve.prefix_cache import PrefixCache
from gpt_jax.serve.requests import Delta, Done, Finish, Request, TokenLogprob

log = logging.getLogger("gpt_jax.serve")


# idle this long (no row, nothing waiting), the slots cache starts small again; not at once: the
# clients of a burst that just ended send their next requests within milliseconds
IDLE_SHRINK_S = 0.5


class QueueFull(RuntimeError):
    pass


class _InFlight(NamedTuple):
    out: slots.Sampled  # on the device
    rows: list  # the rows it decoded


class Engine(Admission, SlotDevice):
    def __init__(self, params, config: GPTConfig, tokenizer, n_slots: int = 8,
                 max_queue: int = 64, prefix_cache_mb: float = 256, tool_workers: int = 4,
                 adapters: dict | None = None, step_delay_s: float = 0.0, overlap: bool = True):
        """`adapters`: {name: lora.Adapter} of this base model; a request names one (or none)
        and its rows run through it inside the shared batch (`gpt_jax.lora_batch`).
        `step_delay_s`: a pause after each decode step (tests that must act while a reply
        streams, on hosts fast enough to finish it first; demos of streaming).
        `overlap`: dispatch each decode step before reading the last one back (False: read each
        step back before the next; the same tokens, for comparison)."""
        super().__init__(params, config, tokenizer, n_slots, adapters)
        self.max_queue, self.step_delay_s = int(max_queue), float(step_delay_s)
        self.overlap = bool(overlap)
        self.prefix = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        try:
            self.tool_ids = ToolIds.of(tokenizer)
        except KeyError:
            self.tool_ids = None
        self.rows: list[Row | None] = [None] * self.n_slots
        self.waiting: collections.deque[Request] = collections.deque()
        self._lock = threading.Condition()
        self._stop = False
        self._tools = ThreadPoolExecutor(max_workers=tool_workers, thread_name_prefix="tool")
        self._thread: threading.Thread | None = None
        self._inflight: _InFlight | None = None  # the last decode step, not read back yet
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
                        self.cache = self.empty_slots(1, 64)  # idle: small again
                if self._stop:
                    return
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a bug must not leave clients hanging
                log.exception("engine step failed; failing its rows")
                self._inflight = None
                for r in [r for r in self.rows if r is not None]:
                    self._finish(r, "error")
                self.cache = self.empty_slots(1, 64)

    def _step(self) -> None:
        now = time.monotonic()
        self._expire(now)
        self._admit()
        for r in [r for r in self.rows if r is not None and r.tool_future is not None]:
            if r.tool_future.done() and not r.inflight:
                self._resume_after_tool(r)
        running = self._running()
        if self._inflight is not None and (
                not running or any(r.matcher is not None for r in running)):
            self._drain()  # the host decides these rows' next input
            running = self._running()
        if not running:
            if any(r is not None for r in self.rows):
                time.sleep(0.002)  # only rows waiting on tools
            return
        present = [r for r in self.rows if r is not None]
        self._fit(max(r.slot for r in present) + 1,
                  max(r.length + r.inflight for r in present) + 1, shrink=True)
        if self._inflight is not None and \
                self._inflight.out.token.shape[0] != slots.cache_shape(self.cache)[0]:
            self._drain()  # resized: its samples no longer line up
            if not (running := self._running()):
                return
        active, chained = np.zeros(self.n_slots, bool), np.zeros(self.n_slots, bool)
        for r in running:
            active[r.slot], chained[r.slot] = True, r.inflight > 0
        previous = self._take_inflight()
        out = self._decode(active, self._static([r.request for r in running]), chained=chained,
                           prev_tokens=None if previous is None else previous.out.token)
        self.steps += 1
        for r in running:
            r.inflight += 1
        self._inflight = _InFlight(out, running)
        if not self.overlap:
            self._drain()
        if self.step_delay_s > 0:
            time.sleep(self.step_delay_s)
        if previous is not None:  # read back while the device runs the step just dispatched
            self._collect(previous)

    def _running(self) -> list[Row]:
        return [r for r in self.rows if r is not None and r.tool_future is None]

    def _drain(self) -> None:
        """Reads the step in flight back now (the host needs its rows' state first)."""
        self._collect(self._take_inflight())

    def _take_inflight(self) -> "_InFlight | None":
        inflight, self._inflight = self._inflight, None
        return inflight

    def _collect(self, inflight: "_InFlight | None") -> None:
        """Reads a dispatched step back and gives each of its rows the token it sampled; a row
        that ended or paused for a tool since the dispatch drops it (its write past the row's
        end is never read: the next prefill into the slot overwrites it)."""
        if inflight is None:
            return
        out = jax.device_get(inflight.out)
        for r in inflight.rows:
            r.inflight -= 1
            if self.rows[r.slot] is not r or r.tool_future is not None:
                continue
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

    def _resume_after_tool(self, r: Row) -> None:
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

    def _accept(self, r: Row, out: slots.Sampled, i: int) -> None:
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

    def _take(self, r: Row, token: int, lp: TokenLogprob | None) -> bool:
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

    def _reply_text(self, r: Row) -> str:
        ids = r.tokens[len(r.request.prompt):] + [r.next_token]
        return self.tok.decode([t for t in ids if not self.tok.is_special(t)
                                and t < self.tok.vocab_size])

    def _finish(self, r: Row, reason: str) -> None:
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
